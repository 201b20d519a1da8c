import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { ClientRMQ, RmqRecordBuilder } from '@nestjs/microservices';
import { randomUUID } from 'node:crypto';
import { lastValueFrom } from 'rxjs';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { waitFor } from '../support/cluster.js';
import { type ConsumerProcess, Observations, startConsumerProcess } from '../support/consumer-process.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, effectCount, effectsOf } from '../support/effects.js';
import { type ConsumerSettings, startConsumer } from '../support/message-app.js';
import { TestQueue } from '../support/rabbitmq.js';

const describe = await describeWithBrokers(['rabbitmq']);

/**
 * RabbitMQ consumers with manual acknowledgement (`noAck: false`): every message is acked
 * by the library's `acknowledge` once its outcome is stored, never by a handler. Each test
 * has a queue of its own and ends by checking that its consumers left nothing
 * unacknowledged: a message delivered and never acked returns to the queue when its
 * consumer disconnects.
 */
describe('idempotent RabbitMQ consumers', () => {
  let db: TestDatabase;
  const queues: TestQueue[] = [];
  const processes: ConsumerProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
  });

  afterAll(async () => {
    await Promise.all(processes.map((consumer) => consumer.crash()));
    await Promise.all(queues.map((queue) => queue.delete()));
    await db?.drop();
  });

  async function newQueue(label: string): Promise<TestQueue> {
    const queue = await TestQueue.create(label);
    queues.push(queue);
    return queue;
  }

  function settings(queue: TestQueue, extra: Partial<ConsumerSettings> = {}): ConsumerSettings {
    return { transport: 'rmq', databaseUrl: db.url, brokerUrl: BROKER_URLS.rabbitmq, queue: queue.name, ...extra };
  }

  async function startProcess(queue: TestQueue, extra: Partial<ConsumerSettings> = {}): Promise<ConsumerProcess> {
    const consumer = await startConsumerProcess(settings(queue, extra));
    processes.push(consumer);
    return consumer;
  }

  /** Runs `body` against a consumer in the test process, then checks that nothing was left unacknowledged. */
  async function withConsumer(
    label: string,
    extra: Partial<ConsumerSettings>,
    body: (queue: TestQueue, seen: Observations) => Promise<void>,
  ): Promise<void> {
    const queue = await newQueue(label);
    const seen = new Observations();
    const consumer = await startConsumer(settings(queue, extra), seen.add);
    try {
      await body(queue, seen);
    } finally {
      await consumer.close();
    }
    expect(await queue.ready()).toBe(0);
  }

  it('runs an event published five times with one messageId once, other ids once each, and acks every copy', async () => {
    await withConsumer('duplicates', {}, async (queue, seen) => {
      const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
      for (const ref of [a, b, a, a, c, a, a]) await queue.publishEvent('order.placed', { ref }, ref);
      await seen.until({ event: 'acked', id: a }, 5);
      await seen.until({ event: 'acked', id: b });
      await seen.until({ event: 'acked', id: c });
      expect(await effectsOf(db.pool, 'order.placed', [a, b, c])).toEqual({ [a]: 1, [b]: 1, [c]: 1 });
    });
  });

  it('answers a repeated request with the stored reply, without running the handler again', async () => {
    await withConsumer('request-response', {}, async (queue) => {
      const client = new ClientRMQ({
        urls: [BROKER_URLS.rabbitmq],
        queue: queue.name,
        queueOptions: { durable: false },
      });
      await client.connect();
      try {
        const ref = randomUUID();
        const ask = (messageId: string) =>
          lastValueFrom(
            client.send('order.quote', new RmqRecordBuilder({ ref, amount: 21 }).setOptions({ messageId }).build()),
          );
        const first = await ask(ref);
        const repeat = await ask(ref);
        // The reply holds a fresh UUID per run: only the stored reply can equal it.
        expect(first).toEqual({ ref, quote: expect.any(String), total: 42 });
        expect(repeat).toEqual(first);
        expect(await effectCount(db.pool, 'order.quote', ref)).toBe(1);
        const other = await ask(randomUUID());
        expect(other.quote).not.toBe(first.quote);
        expect(await effectCount(db.pool, 'order.quote', ref)).toBe(2);
      } finally {
        await client.close();
      }
    });
  });

  it('refuses a message without a messageId without running its handler; with required: false it runs', async () => {
    await withConsumer('no-message-id', {}, async (queue, seen) => {
      const ref = randomUUID();
      await queue.publishEvent('order.placed', { ref });
      await queue.publishEvent('audit.logged', { ref });
      await seen.until({ event: 'refused', pattern: 'order.placed', error: 'MissingMessageKeyError' });
      // The unguarded handler is acknowledged once it has run, like any other.
      await seen.until({ event: 'acked', pattern: 'audit.logged' });
      expect(await effectCount(db.pool, 'order.placed', ref)).toBe(0);
      expect(await effectCount(db.pool, 'audit.logged', ref)).toBe(1);
    });
  });

  it('does not run a message again when it comes back after its ack was lost, and acks it then', async () => {
    await withConsumer('lost-ack', { requeueFirstDelivery: true }, async (queue, seen) => {
      const ref = randomUUID();
      await queue.publishEvent('order.placed', { ref }, ref);
      await seen.until({ event: 'acked', id: ref, redelivered: true });
      expect(seen.count({ event: 'requeued', id: ref, redelivered: false })).toBe(1);
      expect(await effectCount(db.pool, 'order.placed', ref)).toBe(1);
    });
  });

  /**
   * Two consumer processes with a hook that holds a first delivery only: whichever gets the
   * message stops at the hook (the `victim`, for the test to kill there); the other
   * (`survivor`) is left to receive the redelivery.
   */
  async function holdAt(hook: 'pauseBeforeAck' | 'pauseInHandler', ref: string) {
    const queue = await newQueue(hook);
    const consumers = await Promise.all([1, 2].map(() => startProcess(queue, { [hook]: true })));
    await queue.publishEvent('payment.captured', { ref }, ref);
    const event = hook === 'pauseBeforeAck' ? 'paused-before-ack' : 'paused-in-handler';
    const holding = () => consumers.findIndex((consumer) => consumer.observations.count({ event, id: ref }) > 0);
    await waitFor(() => Promise.resolve(holding() >= 0), `${event} in either process`);
    return { queue, victim: consumers[holding()], survivor: consumers[1 - holding()] };
  }

  it('a consumer killed after its transactional commit, before its ack: the redelivery is acked, not run again', async () => {
    const ref = randomUUID();
    const { queue, victim, survivor } = await holdAt('pauseBeforeAck', ref);
    // Committed, and the message still unacknowledged: the window a crash must not turn into a second run.
    expect(await effectCount(db.pool, 'payment.captured', ref)).toBe(1);
    await victim.crash();
    await survivor.observations.until({ event: 'acked', id: ref, redelivered: true });
    expect(await effectCount(db.pool, 'payment.captured', ref)).toBe(1);
    await survivor.stop();
    expect(await queue.ready()).toBe(0);
  });

  it('a consumer killed in its transactional handler, before the commit: its write is undone, the redelivery runs once', async () => {
    const ref = randomUUID();
    const { queue, victim, survivor } = await holdAt('pauseInHandler', ref);
    // Written in the record's transaction, so invisible until it commits.
    expect(await effectCount(db.pool, 'payment.captured', ref)).toBe(0);
    await victim.crash();
    await survivor.observations.until({ event: 'acked', id: ref, redelivered: true });
    expect(await effectCount(db.pool, 'payment.captured', ref)).toBe(1);
    await survivor.stop();
    expect(await queue.ready()).toBe(0);
  });

  it('runs each id once when its duplicates are consumed in parallel by two processes (prefetch 20)', async () => {
    const queue = await newQueue('parallel');
    const consumers = await Promise.all([1, 2].map(() => startProcess(queue, { prefetch: 20, workMs: 50 })));
    await waitFor(async () => (await queue.consumers()) === 2, 'both processes consuming');
    const refs = Array.from({ length: 8 }, () => randomUUID());
    const copies = 5;
    // Copies of one id one after another: RabbitMQ deals consecutive messages out to both consumers in turn.
    const events = refs.flatMap((ref) =>
      Array.from({ length: copies }, () =>
        ['order.placed', 'payment.captured'].map((pattern) => ({ pattern, data: { ref }, messageId: ref })),
      ).flat(),
    );
    await queue.publishEvents(events);
    const total = events.length;
    const acked = () => consumers.reduce((sum, consumer) => sum + consumer.observations.count({ event: 'acked' }), 0);
    await waitFor(() => Promise.resolve(acked() === total), `${total} acks`, 30_000);
    const once = Object.fromEntries(refs.map((ref) => [ref, 1]));
    expect(await effectsOf(db.pool, 'order.placed', refs)).toEqual(once);
    expect(await effectsOf(db.pool, 'payment.captured', refs)).toEqual(once);
    // The duplicates really met on both processes: some id was delivered to each.
    const metOnBoth = refs.filter((ref) =>
      consumers.every((consumer) => consumer.observations.count({ event: 'acked', id: ref }) > 0),
    );
    expect(metOnBoth.length).toBeGreaterThan(0);
    await Promise.all(consumers.map((consumer) => consumer.stop()));
    expect(await queue.ready()).toBe(0);
  });
});
