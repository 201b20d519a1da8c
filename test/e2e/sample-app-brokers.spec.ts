import { afterAll, afterEach, beforeAll, expect, it } from '@jest/globals';
import { connect } from 'amqplib';
import { Queue } from 'bullmq';
import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { Cluster, waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import type { SampleProcess } from '../support/sample-process.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const describeBrokers = await describeWithBrokers(['rabbitmq', 'redis']);

/** Names unique to this run: other runs use the same brokers at the same time. */
const RUN = 'sample-test-' + randomBytes(4).toString('hex');
const QUEUE_OPTIONS = { durable: true };

/** The lines of the instances' logs that match, with the first capture group of each. */
function logged(instances: SampleProcess[], pattern: RegExp): string[] {
  const global = new RegExp(pattern.source, 'g');
  return instances.flatMap((instance) => [...instance.output().matchAll(global)].map((match) => match[1]));
}

/** Waits until the instances' logs show something. */
function untilLogged(check: () => boolean, what: string, timeoutMs?: number): Promise<void> {
  return waitFor(() => Promise.resolve(check()), what, timeoutMs);
}

function countsOf(values: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1);
  return counts;
}

/** The same envelope as the outbox relay (Nest's RabbitMQ transport reads `{ pattern, data }`). */
async function publish(queue: string, events: Array<{ messageId: string; data: unknown }>): Promise<void> {
  const connection = await connect(BROKER_URLS.rabbitmq);
  try {
    const channel = await connection.createConfirmChannel();
    await channel.assertQueue(queue, QUEUE_OPTIONS);
    for (const { messageId, data } of events) {
      const content = Buffer.from(JSON.stringify({ pattern: 'payment.succeeded', data }));
      channel.sendToQueue(queue, content, { messageId, persistent: true, contentType: 'application/json' });
    }
    await channel.waitForConfirms();
  } finally {
    await connection.close();
  }
}

async function deleteQueues(queues: string[]): Promise<void> {
  const connection = await connect(BROKER_URLS.rabbitmq);
  try {
    const channel = await connection.createChannel();
    for (const queue of queues) await channel.deleteQueue(queue);
  } finally {
    await connection.close();
  }
}

/**
 * The sample app's broker features on real processes, RabbitMQ and Redis: receipts once
 * per payment whatever the deliveries, settlements once per tick whatever the instances.
 * "Once" is counted three ways: rows, idempotency records, and the handlers' own log lines
 * (each run logs one), since the unique constraints alone would hide a second run.
 */
describeBrokers('sample app with RabbitMQ and Redis', () => {
  let db: TestDatabase;
  const cluster = new Cluster(() => db);
  const queues: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(() => cluster.stopAll());
  afterAll(async () => {
    await deleteQueues(queues).catch(() => undefined);
    await db?.drop();
  });

  const rows = async (sql: string, params: unknown[] = []) => (await db.pool.query(sql, params)).rows;
  const receiptsPerPayment = async (user: string) =>
    rows(
      `SELECT p.id, count(r.id)::int AS receipts FROM payments p LEFT JOIN receipts r ON r.payment_id = p.id
        WHERE p.user_id = $1 GROUP BY p.id`,
      [user],
    );
  const consuming = (instances: SampleProcess[], queue: string, timeoutMs?: number) =>
    untilLogged(
      () => instances.every((instance) => instance.output().includes(`consuming "${queue}"`)),
      'the consumers',
      timeoutMs,
    );
  const WRITES = /payment\.succeeded (\S+): writing its receipt/;
  const DUPLICATES = /payment\.succeeded (\S+): a duplicate, acknowledged/;

  it('writes one receipt per payment with two instances consuming, and acknowledges republished events', async () => {
    const queue = `${RUN}-receipts`;
    queues.push(queue);
    const instances = await cluster.startMany(2, { RABBITMQ_URL: BROKER_URLS.rabbitmq, RABBITMQ_QUEUE: queue });
    await consuming(instances, queue);
    const user = 'receipts-' + randomUUID().slice(0, 8);
    const payments: Array<{ id: string; amount: number }> = [];
    for (let i = 0; i < 20; i++) {
      const key = randomUUID();
      const body = { amount: 100 + i, currency: 'EUR' };
      const first = await post(instances[i % 2].url, '/payments', { key, user, body });
      // A retry on the other instance is replayed: no second payment, so no second event.
      const retry = await post(instances[(i + 1) % 2].url, '/payments', { key, user, body });
      expect([first.status, retry.status, retry.text]).toEqual([201, 201, first.text]);
      payments.push(first.json);
    }
    const allReceipts = async () => (await receiptsPerPayment(user)).every((row) => row.receipts === 1);
    await waitFor(allReceipts, 'a receipt for every payment', 20_000);

    const event = (payment: { id: string; amount: number }) => ({
      messageId: payment.id,
      data: { paymentId: payment.id, userId: user, amount: payment.amount, currency: 'EUR' },
    });
    // Six copies of a new event at once: both idle consumers get some (RabbitMQ deals them
    // round robin), so copies run in parallel on two processes. The payment row is made
    // here, without an outbox row, so that no relay publishes it too.
    const [{ id: parallelId }] = await rows(
      "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, 700, 'EUR', 'succeeded') RETURNING id",
      [user],
    );
    const parallel = event({ id: parallelId, amount: 700 });
    await publish(queue, Array(6).fill(parallel));
    await untilLogged(() => logged(instances, DUPLICATES).length === 5, 'the parallel copies to be settled');
    // Every event published again, as a relay that died before deleting its outbox rows
    // would; plus one with the right id and another amount, which must not pass as a repeat.
    await publish(queue, payments.map(event));
    const tampered = { ...event(payments[0]), data: { ...event(payments[0]).data, amount: 1 } };
    await publish(queue, [tampered]);
    await untilLogged(
      () =>
        logged(instances, DUPLICATES).length === 20 + 5 &&
        logged(instances, /payment\.succeeded (\S+): rejected/).length === 1,
      'the republished events to be settled',
    );

    const ids = [...payments.map((payment) => payment.id), parallelId];
    expect((await receiptsPerPayment(user)).map((row) => row.receipts)).toEqual(Array(21).fill(1));
    const writes = countsOf(logged(instances, WRITES));
    expect(ids.map((id) => writes.get(id))).toEqual(Array(21).fill(1));
    const duplicates = countsOf(logged(instances, DUPLICATES));
    expect(ids.map((id) => duplicates.get(id))).toEqual([...Array(20).fill(1), 5]);
    // The parallel copies reached both processes: the guard held across them, not only within one.
    for (const instance of instances) {
      expect(logged([instance], new RegExp(`payment\\.succeeded (${parallelId}): `)).length).toBeGreaterThan(0);
    }
    const records = await rows(
      `SELECT status, count(*)::int AS n FROM idempotency_keys WHERE method = 'event' AND route = 'payment.succeeded'
          AND idempotency_key = ANY($1) GROUP BY status`,
      [ids],
    );
    expect(records).toEqual([{ status: 'completed', n: 21 }]);
    expect(await rows('SELECT * FROM outbox')).toEqual([]);
    const output = instances.map((instance) => instance.output()).join('');
    expect(output).not.toMatch(/requeued|duplicate key value|ERROR \[(?!Receipts\])/);
  });

  it('takes payments at full speed while RabbitMQ is unreachable, then delivers their events once', async () => {
    const queue = `${RUN}-outage`;
    queues.push(queue);
    const proxy = await TcpProxy.start(BROKER_URLS.rabbitmq);
    try {
      proxy.down();
      const instances = await cluster.startMany(2, {
        RABBITMQ_URL: proxy.url(BROKER_URLS.rabbitmq),
        RABBITMQ_QUEUE: queue,
      });
      const user = 'outage-' + randomUUID().slice(0, 8);
      const payments: Array<{ id: string; amount: number }> = [];
      const latencies: number[] = [];
      for (let i = 0; i < 10; i++) {
        const started = performance.now();
        const response = await post(instances[i % 2].url, '/payments', {
          key: randomUUID(),
          user,
          body: { amount: 500 + i, currency: 'USD' },
        });
        latencies.push(performance.now() - started);
        expect(response.status).toBe(201);
        payments.push(response.json);
      }
      // The request writes its event to the outbox, in its own transaction; it never waits for
      // the broker, which would take the relay's 5 s connect time-out at least (or for ever).
      expect(Math.max(...latencies)).toBeLessThan(3000);
      expect((await rows('SELECT count(*)::int AS n FROM outbox'))[0].n).toBe(10);
      await untilLogged(
        () => logged(instances, /(cannot publish payment events)/).length > 0,
        'the relay to report the outage',
      );

      // Six more copies of the first payment's event, published directly: when the broker
      // comes back, they and the relay's own copy are delivered at once.
      const [first] = payments;
      const copy = {
        messageId: first.id,
        data: { paymentId: first.id, userId: user, amount: first.amount, currency: 'USD' },
      };
      await publish(queue, Array(6).fill(copy));
      await sleep(1000);
      proxy.up();
      await consuming(instances, queue, 20_000);
      await waitFor(
        async () =>
          (await receiptsPerPayment(user)).every((row) => row.receipts === 1) &&
          logged(instances, DUPLICATES).length === 6,
        'every receipt, and the copies acknowledged',
        20_000,
      );
      expect((await receiptsPerPayment(user)).map((row) => row.receipts)).toEqual(Array(10).fill(1));
      const writes = countsOf(logged(instances, WRITES));
      expect(payments.map((payment) => writes.get(payment.id))).toEqual(Array(10).fill(1));
      expect(countsOf(logged(instances, DUPLICATES))).toEqual(new Map([[first.id, 6]]));
      expect(await rows('SELECT * FROM outbox')).toEqual([]);
      console.log(`payments while RabbitMQ was down: slowest ${Math.round(Math.max(...latencies))} ms`);
    } finally {
      await proxy.close();
    }
  });

  it('settles each tick once with three instances ticking every 500 ms', async () => {
    const prefix = `${RUN}-bull`;
    const env = { REDIS_URL: BROKER_URLS.redis, BULLMQ_PREFIX: prefix, SETTLEMENT_INTERVAL_MS: '500' };
    const queue = new Queue('settlement', { connection: { url: BROKER_URLS.redis }, prefix });
    // Its calls fail on their own; an 'error' event without a listener would end the run.
    queue.on('error', () => undefined);
    try {
      const started = Date.now();
      const instances = await cluster.startMany(3, env);
      const from = Date.now();
      await sleep(4000);
      await cluster.stopAll();
      const to = Date.now();
      // The tick's guard: each tick enqueued by one instance, though all three fire in every window.
      const enqueued = countsOf(logged(instances, /tick (\S+): job \S+ enqueued/));
      expect([...enqueued.values()]).toEqual(Array(enqueued.size).fill(1));

      // A job enqueued just before the instances stopped is settled by a fresh one, whose
      // own first tick is an hour away.
      const drainer = await cluster.start({ ...env, SETTLEMENT_INTERVAL_MS: String(60 * 60 * 1000) });
      const draining = Date.now();
      const settlements = async () =>
        (await rows('SELECT tick, job_id FROM settlements ORDER BY tick')).map((row) => ({
          tick: (row.tick as Date).toISOString(),
          jobId: row.job_id as string,
        }));
      const settledTicks = async () => new Set((await settlements()).map((row) => row.tick));
      await waitFor(
        async () => {
          const ticks = await settledTicks();
          return [...enqueued.keys()].every((tick) => ticks.has(tick));
        },
        'every enqueued tick settled',
        80_000,
      );
      const settled = await settlements();
      const drained = Date.now();
      for (const { tick, jobId } of settled) {
        // Each tick is its window's start, and its job's id is derived from it.
        expect(Date.parse(tick) % 500).toBe(0);
        expect(jobId).toBe(`settlement-${Date.parse(tick)}`);
      }
      const all = [...instances, drainer];
      // The job's guard: one run of the processor per job, counted by its own log line.
      const runs = countsOf(logged(all, /job (\S+): settling tick/));
      expect(settled.map(({ jobId }) => runs.get(jobId))).toEqual(Array(settled.length).fill(1));
      // Three instances leave hardly a window without a tick.
      const windows = Math.floor((to - from) / 500);
      expect(settled.length).toBeGreaterThanOrEqual(windows - 3);
      console.log(
        `settlements: ${settled.length} ticks settled, ${enqueued.size} enqueue lines, in ${to - from} ms ` +
          `(${windows} windows) over 3 instances, each tick enqueued once and each job run once ` +
          `(start-up ${from - started} ms, drain ${drained - draining} ms)`,
      );

      // A settled job run again (as BullMQ does for a stalled one) returns its stored result, writing nothing.
      const { jobId } = settled[0];
      const job = (await queue.getJob(jobId))!;
      const result = job.returnvalue as unknown;
      await job.retry('completed');
      await waitFor(
        async () => (await (await queue.getJob(jobId))?.getState()) === 'completed',
        'the job to run again',
      );
      expect((await queue.getJob(jobId))!.returnvalue).toEqual(result);
      expect(logged(all, /job (\S+): settling tick/).filter((id) => id === jobId)).toHaveLength(1);
      expect(await settlements()).toEqual(settled);
    } finally {
      await cluster.stopAll();
      await queue.obliterate({ force: true }).catch(() => undefined);
      await queue.close();
    }
    // Three processes start slowly on a busy machine, and a job cut off by a shutdown that
    // took too long is run again only once BullMQ finds it stalled (its lock lasts 30 s).
  }, 150_000);
});
