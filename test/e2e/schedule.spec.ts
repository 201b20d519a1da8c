import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { type ChildApp, startChildApp } from '../support/child-app.js';
import { waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, effectsPerKey } from '../support/effects.js';

const INSTANCES = 3;
/** Ticks to see after every instance has started, so that each of them was in the race for these. */
const TICKS = 5;

/**
 * Scheduled tasks (`@nestjs/schedule`) with `@IdempotentMethod()`, run by three instances
 * of test/support/scheduler-app.ts on one database, beside three instances of the same
 * application without the decorator (the control). Every run inserts an effect row
 * keyed by its tick; each tick must have run on one instance.
 */
describe('@IdempotentMethod() on scheduled tasks, three instances', () => {
  let db: TestDatabase;
  const apps: ChildApp[] = [];
  /** What the guarded instances printed while they ran (their shutdown aside). */
  let guardedOutput = '';
  /** When the last instance had started, as an ISO time. */
  let allStarted: string;

  /** Effects of a kind with keys from `since` on (keys are ISO times, so they sort as times). */
  const effectsSince = async (kind: string, since: string) =>
    Object.fromEntries(Object.entries(await effectsPerKey(db.pool, kind)).filter(([key]) => key >= since));

  /** The keys of a task's records: all of them, and those completed. */
  const recordKeys = async (route: string) => {
    const { rows } = await db.pool.query(
      'SELECT idempotency_key, status FROM idempotency_keys WHERE route = $1 ORDER BY 1',
      [route],
    );
    return {
      all: rows.map((row) => row.idempotency_key as string),
      completed: rows.filter((row) => row.status === 'completed').map((row) => row.idempotency_key as string),
    };
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    const start = (name: string, env: Record<string, string>) =>
      startChildApp('scheduler-app', name, { DATABASE_URL: db.url, ...env }).then((app) => {
        apps.push(app);
        return app;
      });
    await Promise.all(
      Array.from({ length: INSTANCES }, (_, index) => [
        start(`guarded-${index}`, {}),
        start(`control-${index}`, { GUARD: 'off' }),
      ]).flat(),
    );
    allStarted = new Date().toISOString();
    const seen = async (kind: string, ticks: number) =>
      Object.keys(await effectsSince(kind, allStarted)).length >= ticks;
    // The traced task is not waited for: it ticks with the plain cron task, one tick
    // behind at most (its last run may be under way), so its own test tells if it fails.
    await waitFor(
      async () =>
        (await seen('cron', TICKS + 1)) &&
        (await seen('interval', TICKS)) &&
        (await seen('cron-unguarded', TICKS)) &&
        (await seen('interval-unguarded', TICKS)),
      `${TICKS} ticks of each task after all instances started`,
      60_000,
    );
    guardedOutput = apps
      .filter((app) => app.name.startsWith('guarded'))
      .map((app) => app.output())
      .join('\n');
    await Promise.all(apps.map((app) => app.stop()));
  }, 180_000);

  afterAll(async () => {
    await Promise.all(apps.map((app) => app.stop()));
    await db?.drop();
  });

  it("@Cron('* * * * * *'): each tick (its scheduled second) ran once across the instances", async () => {
    const perTick = await effectsPerKey(db.pool, 'cron');
    const ticks = Object.keys(perTick);
    expect(ticks.length).toBeGreaterThanOrEqual(TICKS);
    expect(Object.values(perTick)).toEqual(ticks.map(() => 1));
    for (const tick of ticks) expect(tick).toMatch(/T\d\d:\d\d:\d\d\.000Z$/);
    // The effects' ticks are the records' keys: the wrapper keyed each run by its scheduled
    // time. A run cut short by the shutdown may have its record without its effect.
    const records = await recordKeys('Ticks.everySecond');
    expect(records.all).toEqual(expect.arrayContaining(ticks));
    expect(ticks).toEqual(expect.arrayContaining(records.completed));
  });

  it('@Interval(500): each window of 500 ms ran once across the instances', async () => {
    const perWindow = await effectsPerKey(db.pool, 'interval');
    const windows = Object.keys(perWindow);
    expect(windows.length).toBeGreaterThanOrEqual(TICKS);
    expect(Object.values(perWindow)).toEqual(windows.map(() => 1));
    for (const window of windows) expect(Date.parse(window) % 500).toBe(0);
    // Written in the transaction that completes the record: the same keys, exactly.
    expect(windows).toEqual((await recordKeys('Ticks.everyHalfSecond')).completed);
  });

  it('a cron task with a metadata-copying wrapper between @Cron() and @IdempotentMethod() runs once per tick, named Class.method', async () => {
    const perTick = await effectsPerKey(db.pool, 'traced');
    const ticks = Object.keys(perTick);
    expect(Object.keys(await effectsSince('traced', allStarted)).length).toBeGreaterThanOrEqual(TICKS);
    expect(Object.values(perTick)).toEqual(ticks.map(() => 1));
    const records = await recordKeys('Ticks.tracedEverySecond');
    expect(records.all).toEqual(expect.arrayContaining(ticks));
    expect(ticks).toEqual(expect.arrayContaining(records.completed));
  });

  it('the instances that lost a tick skipped it quietly: no instance logged an error', () => {
    expect(guardedOutput).not.toMatch(/ERROR/);
  });

  it('without the decorator (control), the instances run the same ticks: more than one effect per tick', async () => {
    const cron = Object.values(await effectsSince('cron-unguarded', allStarted));
    const interval = Object.values(await effectsSince('interval-unguarded', allStarted));
    expect(Math.max(...cron)).toBeGreaterThan(1);
    expect(Math.max(...interval)).toBeGreaterThan(1);
  });
});
