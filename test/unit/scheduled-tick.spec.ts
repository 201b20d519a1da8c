import { describe, expect, it } from '@jest/globals';
import { Cron, Interval, Timeout } from '@nestjs/schedule';
import { DateTime } from 'luxon';
import { scheduledTickOf } from '../../lib/method/scheduled-tick.js';

/** Methods with real `@nestjs/schedule` metadata: the tick is read from what the decorators record. */
class Tasks {
  @Cron('* * * * * *')
  everySecond(): void {}

  @Cron('0 */15 * * * *')
  everyQuarterHour(): void {}

  // UTC set explicitly: a cron without a zone runs in the machine's, and these instants are UTC.
  @Cron('0 0 9 * * 1-5', { timeZone: 'UTC' })
  weekdayMornings(): void {}

  @Cron('0 0 0 1 1 *', { timeZone: 'UTC' })
  newYear(): void {}

  @Cron('0 0 9,17 * * *', { name: 'new-york-office', timeZone: 'America/New_York' })
  newYorkOffice(): void {}

  // A second zone, so that the test also fails on a machine that runs on New York time.
  @Cron('0 0 15 * * *', { timeZone: 'Asia/Tokyo' })
  tokyoAfternoons(): void {}

  // India is UTC+05:30: 09:30 there is 04:00 UTC.
  @Cron('0 30 9 * * *', { utcOffset: 330 })
  indiaMornings(): void {}

  @Cron(new Date('2026-03-01T00:00:00.000Z'))
  once(): void {}

  @Cron(DateTime.fromISO('2026-04-01T12:00:00.000Z'))
  onceLuxon(): void {}

  @Interval(500)
  halfSecond(): void {}

  @Interval('report', 60_000)
  everyMinute(): void {}

  @Timeout(1000)
  afterStart(): void {}

  unscheduled(): void {}
}

/** The decorated function itself, as the scheduler and the method wrapper see it. */
const methodOf = (name: keyof Tasks) => Reflect.get(Tasks.prototype, name) as object;

const tickOf = async (method: keyof Tasks, iso: string) => {
  const tick = await scheduledTickOf(methodOf(method), Date.parse(iso));
  return tick && { name: tick.name, at: new Date(tick.at).toISOString() };
};

describe('scheduledTickOf()', () => {
  it('keys a cron tick by the latest scheduled time not after now: on the tick, just after, just before', async () => {
    expect(await tickOf('everySecond', '2026-12-01T10:00:05.000Z')).toEqual({ at: '2026-12-01T10:00:05.000Z' });
    expect(await tickOf('everySecond', '2026-12-01T10:00:05.001Z')).toEqual({ at: '2026-12-01T10:00:05.000Z' });
    expect(await tickOf('everySecond', '2026-12-01T10:00:05.999Z')).toEqual({ at: '2026-12-01T10:00:05.000Z' });
    expect(await tickOf('everySecond', '2026-12-01T10:00:04.999Z')).toEqual({ at: '2026-12-01T10:00:04.000Z' });

    expect(await tickOf('everyQuarterHour', '2026-12-01T10:15:00.000Z')).toEqual({ at: '2026-12-01T10:15:00.000Z' });
    expect(await tickOf('everyQuarterHour', '2026-12-01T10:15:00.040Z')).toEqual({ at: '2026-12-01T10:15:00.000Z' });
    expect(await tickOf('everyQuarterHour', '2026-12-01T10:14:59.999Z')).toEqual({ at: '2026-12-01T10:00:00.000Z' });
  });

  it('looks back as far as the schedule needs: over a weekend, to the start of the year', async () => {
    // 2026-11-30 is a Monday: before 09:00 the latest weekday morning is Friday's.
    expect(await tickOf('weekdayMornings', '2026-11-30T08:59:59.999Z')).toEqual({ at: '2026-11-27T09:00:00.000Z' });
    expect(await tickOf('weekdayMornings', '2026-11-30T09:00:00.002Z')).toEqual({ at: '2026-11-30T09:00:00.000Z' });
    expect(await tickOf('newYear', '2026-12-01T10:00:00.000Z')).toEqual({ at: '2026-01-01T00:00:00.000Z' });
  });

  it("computes in the cron's time zone, summer and winter, and keeps the task's name", async () => {
    // 09:00 in New York is 13:00 UTC in summer (EDT) and 14:00 UTC in winter (EST).
    const summer = (iso: string) => tickOf('newYorkOffice', iso);
    expect(await summer('2026-07-01T13:00:00.250Z')).toEqual({
      name: 'new-york-office',
      at: '2026-07-01T13:00:00.000Z',
    });
    expect(await summer('2026-07-01T20:59:59.999Z')).toEqual({
      name: 'new-york-office',
      at: '2026-07-01T13:00:00.000Z',
    });
    expect(await summer('2026-07-01T21:00:00.100Z')).toEqual({
      name: 'new-york-office',
      at: '2026-07-01T21:00:00.000Z',
    });
    expect(await summer('2026-12-01T14:00:00.300Z')).toEqual({
      name: 'new-york-office',
      at: '2026-12-01T14:00:00.000Z',
    });
    // Before 09:00 in New York, the latest tick is 17:00 there the day before.
    expect(await summer('2026-12-01T13:59:59.000Z')).toEqual({
      name: 'new-york-office',
      at: '2026-11-30T22:00:00.000Z',
    });
    // 15:00 in Tokyo (UTC+9, no daylight saving) is 06:00 UTC.
    expect(await tickOf('tokyoAfternoons', '2026-12-01T06:00:00.010Z')).toEqual({ at: '2026-12-01T06:00:00.000Z' });
    expect(await tickOf('tokyoAfternoons', '2026-12-01T05:59:59.990Z')).toEqual({ at: '2026-11-30T06:00:00.000Z' });
  });

  it('computes at a fixed UTC offset', async () => {
    expect(await tickOf('indiaMornings', '2026-12-01T04:00:00.200Z')).toEqual({ at: '2026-12-01T04:00:00.000Z' });
    expect(await tickOf('indiaMornings', '2026-12-01T03:59:59.999Z')).toEqual({ at: '2026-11-30T04:00:00.000Z' });
  });

  it('keys a one-off cron date by that date', async () => {
    expect(await tickOf('once', '2026-03-01T00:00:00.020Z')).toEqual({ at: '2026-03-01T00:00:00.000Z' });
    expect(await tickOf('onceLuxon', '2026-04-01T12:00:00.020Z')).toEqual({ at: '2026-04-01T12:00:00.000Z' });
  });

  it('keys an interval tick by the window of its length that now falls in', async () => {
    const at = (iso: string) => scheduledTickOf(methodOf('halfSecond'), Date.parse(iso));
    expect(await at('2026-12-01T10:00:00.000Z')).toEqual({ at: Date.parse('2026-12-01T10:00:00.000Z') });
    expect(await at('2026-12-01T10:00:00.499Z')).toEqual({ at: Date.parse('2026-12-01T10:00:00.000Z') });
    expect(await at('2026-12-01T10:00:00.500Z')).toEqual({ at: Date.parse('2026-12-01T10:00:00.500Z') });
    expect(await tickOf('everyMinute', '2026-12-01T10:00:59.999Z')).toEqual({
      name: 'report',
      at: '2026-12-01T10:00:00.000Z',
    });
  });

  it('gives no tick to a timeout (it runs once per process start) or an unscheduled method', async () => {
    expect(await tickOf('afterStart', '2026-12-01T10:00:00.000Z')).toBeUndefined();
    expect(await tickOf('unscheduled', '2026-12-01T10:00:00.000Z')).toBeUndefined();
  });
});
