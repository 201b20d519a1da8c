import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Job, Queue } from 'bullmq';
import { randomUUID } from 'node:crypto';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { type ChildApp, startChildApp } from '../support/child-app.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, effectCount } from '../support/effects.js';
import type { ChargeData, OrderData } from '../support/job-worker.js';
import { TestQueues } from '../support/queues.js';

const describeRedis = await describeWithBrokers(['redis']);

/**
 * BullMQ jobs whose processor calls `@IdempotentMethod()` methods, worked by worker
 * processes (test/support/job-worker.ts) on real Redis, with effects counted in PostgreSQL.
 * Each scenario runs on a guarded worker and on a control worker that runs the same code
 * without the decorator: the control shows the duplicate the guard prevents.
 */
describeRedis('@IdempotentMethod() in BullMQ job processors', () => {
  let db: TestDatabase;
  let queues: TestQueues;
  const apps: ChildApp[] = [];

  const startWorker = async (queue: Queue, name: string, env: Record<string, string> = {}) => {
    const app = await startChildApp('job-worker', name, {
      DATABASE_URL: db.url,
      REDIS_URL: BROKER_URLS.redis,
      BULL_PREFIX: queues.prefix,
      QUEUE: queue.name,
      WORKER_NAME: name,
      ...env,
    });
    apps.push(app);
    return app;
  };

  /** The charge job's record, as the store keeps it. */
  const chargeRecord = async (job: Job) => {
    const { rows } = await db.pool.query(
      "SELECT status, response FROM idempotency_keys WHERE route = 'Payments.charge' AND idempotency_key = $1",
      [job.id],
    );
    return rows[0];
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    queues = new TestQueues();
  });

  afterAll(async () => {
    await Promise.all(apps.map((app) => app.stop()));
    await queues?.close();
    await db?.drop();
  });

  describe('a job that BullMQ runs again after a failed attempt', () => {
    let guarded: Queue;
    let control: Queue;

    beforeAll(async () => {
      guarded = queues.queue('retries');
      control = queues.queue('retries-control');
      await Promise.all([startWorker(guarded, 'guarded'), startWorker(control, 'control', { GUARD: 'off' })]);
    }, 120_000);

    /** Adds the same charge to a queue, with three attempts, and waits for its end. */
    const charge = async (queue: Queue, data: ChargeData) => {
      const added = await queue.add('charge', data, {
        jobId: randomUUID(),
        attempts: 3,
        backoff: { type: 'fixed', delay: 50 },
      });
      const job = await queues.settled(queue, added.id!);
      return { job, state: await job.getState(), effects: await effectCount(db.pool, 'charge', job.id) };
    };

    it('a first attempt that fails before its effect leaves the key free: the retry charges once', async () => {
      const { job, state, effects } = await charge(guarded, { failBeforeEffect: true });
      // A key left claimed by the failed attempt would make every retry fail (RequestInProgressError).
      expect(state).toBe('completed');
      // The failed attempt and the retry.
      expect(job.attemptsMade).toBe(2);
      expect(effects).toBe(1);
      expect(job.returnvalue).toEqual({ charged: job.id, by: 'guarded' });
    });

    it('a first attempt that fails after its write is rolled back with the claim: the retry charges once', async () => {
      const [withGuard, withoutGuard] = await Promise.all([
        charge(guarded, { failAfterEffect: true }),
        charge(control, { failAfterEffect: true }),
      ]);
      expect(withGuard.state).toBe('completed');
      expect(withGuard.job.attemptsMade).toBe(2);
      expect(withGuard.effects).toBe(1);
      expect(await chargeRecord(withGuard.job)).toEqual({
        status: 'completed',
        response: expect.anything(),
      });
      expect(withoutGuard.state).toBe('completed');
      expect(withoutGuard.effects).toBe(2);
    });

    it('a job that fails after the method committed gets the stored result on its retry, without a second charge', async () => {
      const [withGuard, withoutGuard] = await Promise.all([
        charge(guarded, { failAfterReturn: true }),
        charge(control, { failAfterReturn: true }),
      ]);
      expect(withGuard.state).toBe('completed');
      expect(withGuard.job.attemptsMade).toBe(2);
      expect(withGuard.effects).toBe(1);
      expect(withGuard.job.returnvalue).toEqual({ charged: withGuard.job.id, by: 'guarded' });
      expect(withoutGuard.state).toBe('completed');
      expect(withoutGuard.effects).toBe(2);
    });

    it('duplicate jobs for one order (other job ids, the same business key) place it once, in parallel', async () => {
      const orderJobs = async (queue: Queue) => {
        const orderId = randomUUID();
        // Three at once: the worker takes them into three of its four slots together.
        const added = await queue.addBulk(
          ['a', 'b', 'c'].map((copy) => ({
            name: 'order',
            data: { orderId, amount: 100 } satisfies OrderData,
            opts: { jobId: `${orderId}-${copy}` },
          })),
        );
        const jobs = await Promise.all(added.map((job) => queues.settled(queue, job.id!)));
        return { orderId, jobs, states: await Promise.all(jobs.map((job) => job.getState())) };
      };
      const [withGuard, withoutGuard] = await Promise.all([orderJobs(guarded), orderJobs(control)]);

      expect(withGuard.states).toEqual(['completed', 'completed', 'completed']);
      expect(await effectCount(db.pool, 'order', withGuard.orderId)).toBe(1);
      // Every job answers with the result of the one run, whichever job ran it.
      const [first, ...others] = withGuard.jobs.map((job) => job.returnvalue);
      expect(first).toEqual({ order: withGuard.orderId, placedBy: expect.stringMatching(/-[abc]$/) });
      expect(others).toEqual([first, first]);
      expect(withoutGuard.states).toEqual(['completed', 'completed', 'completed']);
      expect(await effectCount(db.pool, 'order', withoutGuard.orderId)).toBe(3);

      // The same order with another amount is not a duplicate but a mistake: refused, nothing placed.
      const other = await guarded.add('order', { orderId: withGuard.orderId, amount: 999 } satisfies OrderData);
      const refused = await queues.settled(guarded, other.id!);
      expect(await refused.getState()).toBe('failed');
      expect(refused.failedReason).toMatch(/key reuse/i);
      expect(await effectCount(db.pool, 'order', withGuard.orderId)).toBe(1);
    });
  });

  describe('a worker process killed with kill -9 in the middle of a job', () => {
    type Crash = NonNullable<ChargeData['hang']>;
    /** For each hang point, the job on the guarded queue and the one on the control queue, once settled. */
    const outcomes = new Map<string, { job: Job; state: string; effectsAtCrash: number; effects: number }>();

    /**
     * A first worker per queue takes a charge for each hang point, stops there, and is
     * killed. A second worker then finds the jobs stalled (their locks were not renewed)
     * and runs them again.
     */
    beforeAll(async () => {
      const crashes: Crash[] = ['inside', 'after-return'];
      const runs = (['on', 'off'] as const).map(async (guard) => {
        const queue = queues.queue(`crash-${guard}`);
        const first = await startWorker(queue, 'first', { HANG: 'on', GUARD: guard });
        const added = await Promise.all(
          crashes.map((hang) => queue.add('charge', { hang } satisfies ChargeData, { jobId: randomUUID() })),
        );
        for (const job of added) await first.waitForOutput(new RegExp(`^(inside|returned) ${job.id}$`, 'm'));
        await first.stop('SIGKILL');
        const effectsAtCrash = await Promise.all(added.map((job) => effectCount(db.pool, 'charge', job.id)));
        await startWorker(queue, 'second', { GUARD: guard });
        for (const [index, { id }] of added.entries()) {
          const job = await queues.settled(queue, id!);
          outcomes.set(`${crashes[index]}/${guard}`, {
            job,
            state: await job.getState(),
            effectsAtCrash: effectsAtCrash[index],
            effects: await effectCount(db.pool, 'charge', id),
          });
        }
      });
      await Promise.all(runs);
    }, 180_000);

    const outcome = (crash: Crash, guard: 'on' | 'off') => outcomes.get(`${crash}/${guard}`)!;

    it('(transactional) killed after the commit, before BullMQ completed the job: the second worker gets the stored result', () => {
      const { job, state, effectsAtCrash, effects } = outcome('after-return', 'on');
      expect(effectsAtCrash).toBe(1);
      expect(state).toBe('completed');
      // Run again by the second worker after a stall, not a job the first one finished.
      expect(job.processedBy).toBe('second');
      expect(job.stalledCounter).toBe(1);
      expect(effects).toBe(1);
      // The result the first worker committed, replayed to the second.
      expect(job.returnvalue).toEqual({ charged: job.id, by: 'first' });

      const control = outcome('after-return', 'off');
      expect(control.state).toBe('completed');
      expect(control.effects).toBe(2);
    });

    it('(transactional) killed inside the method, before its commit: the write is rolled back and the second worker charges once', async () => {
      const { job, state, effectsAtCrash, effects } = outcome('inside', 'on');
      // Uncommitted when the process died: nothing of the first run is visible.
      expect(effectsAtCrash).toBe(0);
      expect(state).toBe('completed');
      expect(job.processedBy).toBe('second');
      expect(job.stalledCounter).toBe(1);
      expect(effects).toBe(1);
      expect(job.returnvalue).toEqual({ charged: job.id, by: 'second' });
      expect(await chargeRecord(job)).toEqual({ status: 'completed', response: expect.anything() });

      const control = outcome('inside', 'off');
      expect(control.effectsAtCrash).toBe(1);
      expect(control.state).toBe('completed');
      expect(control.effects).toBe(2);
    });
  });

  it('a worker that starts with jobs already waiting, before IdempotencyModule is initialised, runs each of them once', async () => {
    // A deploy or a restart with a backlog: BullModule starts its workers in its
    // onModuleInit, and they take jobs at once; IdempotencyModule's turn may come later
    // (here it is imported after BullModule, and its start-up check is slow).
    const queue = queues.queue('backlog');
    const added = await queue.addBulk(
      Array.from({ length: 8 }, () => ({
        name: 'charge',
        data: {} satisfies ChargeData,
        opts: { jobId: randomUUID() },
      })),
    );
    await startWorker(queue, 'backlog', { SLOW_START_MS: '1000' });
    const jobs = await Promise.all(added.map((job) => queues.settled(queue, job.id!)));
    expect(jobs.map((job) => job.failedReason)).toEqual(jobs.map(() => undefined));
    expect(await Promise.all(jobs.map((job) => effectCount(db.pool, 'charge', job.id)))).toEqual(jobs.map(() => 1));
  }, 120_000);
});
