import { Logger } from '@nestjs/common';

/**
 * What `@nestjs/schedule` records on a scheduled method, read without importing it (an
 * optional peer). The key strings are its public constants' values.
 */
const SCHEDULER_TYPE = 'SCHEDULER_TYPE';
const SCHEDULER_NAME = 'SCHEDULER_NAME';
const CRON_OPTIONS = 'SCHEDULE_CRON_OPTIONS';
const INTERVAL_OPTIONS = 'SCHEDULE_INTERVAL_OPTIONS';
const CRON = 1;
const TIMEOUT = 2;
const INTERVAL = 3;

/** One tick of a scheduled task: the same on every instance that fires it. */
export interface ScheduledTick {
  /** The task's name (`@Cron(..., { name })`), or undefined when it has none. */
  name?: string;
  /** The tick's scheduled time, epoch ms. */
  at: number;
}

interface CronTimeLike {
  getNextDateFrom(start: Date, timeZone?: string): { toMillis(): number };
}
type CronTimeClass = new (source: string | Date, timeZone?: string | null, utcOffset?: number | null) => CronTimeLike;

/** A variable, so that TypeScript neither resolves nor bundles it: it is an optional peer. */
const CRON_PACKAGE: string = 'cron';

let cronTimeClass: Promise<CronTimeClass | undefined> | undefined;
const logger = new Logger('Idempotency');

/**
 * The kind of schedule a method has, if any: `'timeout'` ones run once per process start,
 * so they have no tick that instances share.
 */
export function scheduleOf(method: object): 'cron' | 'interval' | 'timeout' | undefined {
  const type: unknown = Reflect.getMetadata(SCHEDULER_TYPE, method);
  return type === CRON ? 'cron' : type === INTERVAL ? 'interval' : type === TIMEOUT ? 'timeout' : undefined;
}

/**
 * The tick a scheduled method is running for, at `now`. Every instance fires a cron tick
 * at the same scheduled time, a little late by its own timer: the tick is the latest
 * scheduled time not after now. Interval timers start when each instance starts, so
 * instances are not in step: an interval's tick is the window of its length that now
 * falls in, and each window runs once across instances.
 */
export async function scheduledTickOf(method: object, now: number): Promise<ScheduledTick | undefined> {
  const name = Reflect.getMetadata(SCHEDULER_NAME, method) as string | undefined;
  switch (scheduleOf(method)) {
    case 'cron': {
      const { cronTime, timeZone, utcOffset } = Reflect.getMetadata(CRON_OPTIONS, method) as {
        cronTime: string | Date | { toMillis(): number };
        timeZone?: string;
        utcOffset?: number;
      };
      // A one-off job (a Date, or a Luxon DateTime) has one tick: its date.
      if (cronTime instanceof Date) return { name, at: cronTime.getTime() };
      if (typeof cronTime !== 'string') return { name, at: cronTime.toMillis() };
      return { name, at: await latestCronTime(cronTime, timeZone, utcOffset, now) };
    }
    case 'interval': {
      const { timeout } = Reflect.getMetadata(INTERVAL_OPTIONS, method) as { timeout: number };
      return { name, at: Math.floor(now / timeout) * timeout };
    }
    default:
      return undefined;
  }
}

/** The latest time the cron expression schedules that is not after `now`. */
async function latestCronTime(
  expression: string,
  timeZone: string | undefined,
  utcOffset: number | undefined,
  now: number,
): Promise<number> {
  const CronTime = await loadCronTime();
  if (!CronTime) return Math.floor(now / 1000) * 1000;
  const time = timeZone ? new CronTime(expression, timeZone) : new CronTime(expression, null, utcOffset ?? null);
  // getNextDateFrom() computes in the zone it is given, not the CronTime's: without it, a
  // job in another zone than the machine's would be keyed by the wrong wall clock, and two
  // of its ticks (09:00 and 10:00 in New York on a UTC machine) could share one key.
  const zone = timeZone ?? (utcOffset == null ? systemTimeZone() : offsetZone(utcOffset));
  const nextAfter = (at: number) => time.getNextDateFrom(new Date(at), zone).toMillis();
  // Look back far enough to find one scheduled time, then walk forward to the last one.
  let at = NaN;
  for (let lookBack = 1000; !(at <= now); lookBack *= 2) {
    at = nextAfter(now - lookBack);
    if (lookBack > 400 * 24 * 60 * 60 * 1000) return Math.floor(now / 1000) * 1000;
  }
  // Only forward: should the cron package ever not advance (a time-zone transition), stop.
  for (let next = nextAfter(at); next <= now && next > at; next = nextAfter(at)) at = next;
  return at;
}

/** The zone a CronTime without a zone or an offset runs in (what its constructor picks). */
function systemTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

/** A UTC offset in minutes as the zone name the `cron` package makes of it ("UTC+05:30"). */
function offsetZone(minutes: number): string {
  const sign = minutes < 0 ? '-' : '+';
  const pad = (value: number) => String(value).padStart(2, '0');
  const absolute = Math.abs(minutes);
  return `UTC${sign}${pad(Math.trunc(absolute / 60))}:${pad(absolute % 60)}`;
}

/**
 * The `cron` package that `@nestjs/schedule` runs on. Without it (a package manager that
 * hides it from this library), cron ticks fall back to the whole second they fired in,
 * which every instance agrees on unless its timer fires a second late.
 */
function loadCronTime(): Promise<CronTimeClass | undefined> {
  cronTimeClass ??= import(CRON_PACKAGE).then(
    (module: { CronTime?: CronTimeClass }) => module.CronTime,
    (error: unknown) => {
      logger.warn(
        `the "cron" package could not be loaded (${String(error)}); cron ticks are keyed by the second they fire in. ` +
          'Add "cron" to your dependencies to key them by their scheduled time.',
      );
      return undefined;
    },
  );
  return cronTimeClass;
}
