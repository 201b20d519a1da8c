import { describe, expect, it } from '@jest/globals';
import { scheduledTickOf } from '../../lib/method/scheduled-tick.js';

/** A method as `@Cron(cronTime, options)` of `@nestjs/schedule` leaves it (its metadata, by value). */
function cronMethod(cronTime: unknown, options: { timeZone?: string; utcOffset?: number } = {}): object {
  const method = () => undefined;
  Reflect.defineMetadata('SCHEDULER_TYPE', 1, method);
  Reflect.defineMetadata('SCHEDULE_CRON_OPTIONS', { ...options, cronTime }, method);
  return method;
}

const at = (iso: string) => new Date(iso).getTime();
const keyAt = async (method: object, firedAt: string) =>
  new Date((await scheduledTickOf(method, at(firedAt)))!.at).toISOString();

describe('scheduledTickOf', () => {
  it('keys a cron tick by its scheduled time, a little after it fired', async () => {
    const method = cronMethod('0 */5 * * * *');
    expect(await keyAt(method, '2026-03-10T12:05:00.040Z')).toBe('2026-03-10T12:05:00.000Z');
    expect(await keyAt(method, '2026-03-10T12:09:59.999Z')).toBe('2026-03-10T12:05:00.000Z');
  });

  // 01:00 and 02:00 in Kolkata (UTC+05:30) are 19:30 and 20:30 UTC the day before.
  it.each([
    ['timeZone', { timeZone: 'Asia/Kolkata' }],
    ['utcOffset', { utcOffset: 330 }],
  ])("reads the expression in the job's own zone (%s), so that each tick has a key of its own", async (_, options) => {
    const method = cronMethod('0 0 1,2 * * *', options);
    expect(await keyAt(method, '2026-03-09T19:30:00.020Z')).toBe('2026-03-09T19:30:00.000Z');
    expect(await keyAt(method, '2026-03-09T20:30:00.020Z')).toBe('2026-03-09T20:30:00.000Z');
  });

  it('keys a one-off date by itself, given as a Date or as a Luxon DateTime', async () => {
    const when = '2026-05-01T06:00:00.000Z';
    const dateTime = { toMillis: () => at(when) }; // what @Cron(DateTime.fromISO(...)) records
    expect(await keyAt(cronMethod(new Date(when)), '2026-05-01T06:00:00.015Z')).toBe(when);
    expect(await keyAt(cronMethod(dateTime), '2026-05-01T06:00:00.015Z')).toBe(when);
  });

  it('keys a daily tick in a time zone with daylight saving time by its own time, in both seasons', async () => {
    const method = cronMethod('0 0 9 * * *', { timeZone: 'Europe/Paris' });
    expect(await keyAt(method, '2026-01-15T08:00:00.010Z')).toBe('2026-01-15T08:00:00.000Z');
    expect(await keyAt(method, '2026-07-15T07:00:00.010Z')).toBe('2026-07-15T07:00:00.000Z');
  });
});
