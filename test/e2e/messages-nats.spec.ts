import { afterAll, beforeAll, expect, it } from '@jest/globals';
import type { INestApplication, INestMicroservice } from '@nestjs/common';
import { ClientNats, NatsRecordBuilder } from '@nestjs/microservices';
import { headers } from '@nats-io/transport-node';
import { randomUUID } from 'node:crypto';
import { lastValueFrom } from 'rxjs';
import { PROBLEM_TYPE_BASE } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { waitFor } from '../support/cluster.js';
import { type ConsumerProcess, Observations, startConsumerProcess } from '../support/consumer-process.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, effectCount, effectsOf } from '../support/effects.js';
import { type ConsumerSettings, startConsumer } from '../support/message-app.js';
import { TestSubjects } from '../support/nats.js';

const describe = await describeWithBrokers(['nats']);

/**
 * NATS consumers (core NATS: at most once, no acks; a publisher that retries sends
 * duplicates, which only a key tells apart). Every message a consumer is done with is
 * reported through the library's `acknowledge`, which is how a test knows that all
 * duplicates were handled before it counts effects.
 */
describe('idempotent NATS consumers', () => {
  let db: TestDatabase;
  let subjects: TestSubjects;
  let consumer: INestMicroservice | INestApplication;
  let client: ClientNats;
  const seen = new Observations();
  /** Releases the `order.reserve` handlers held in the test's last call of `hold`. */
  let release = () => {};
  let held = Promise.resolve();

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    subjects = await TestSubjects.create('nats');
    consumer = await startConsumer(settings(), seen.add, () => held);
    client = new ClientNats({ servers: [BROKER_URLS.nats] });
    await client.connect();
  });

  afterAll(async () => {
    release();
    await client?.close();
    await consumer?.close();
    await subjects?.close();
    await db?.drop();
  });

  function settings(extra: Partial<ConsumerSettings> = {}): ConsumerSettings {
    return { transport: 'nats', databaseUrl: db.url, brokerUrl: BROKER_URLS.nats, queue: subjects.prefix, ...extra };
  }

  function request<T>(pattern: string, data: unknown, messageId: string): Promise<T> {
    const header = headers();
    header.set('Nats-Msg-Id', messageId);
    return lastValueFrom(
      client.send<T>(subjects.subject(pattern), new NatsRecordBuilder(data).setHeaders(header).build()),
    );
  }

  it('runs an event published five times with one Nats-Msg-Id once, other ids once each', async () => {
    const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
    for (const ref of [a, b, a, a, c, a, a]) subjects.publishEvent('order.placed', { ref }, ref);
    await seen.until({ event: 'acked', id: a }, 5);
    await seen.until({ event: 'acked', id: b });
    await seen.until({ event: 'acked', id: c });
    expect(await effectsOf(db.pool, 'order.placed', [a, b, c])).toEqual({ [a]: 1, [b]: 1, [c]: 1 });
  });

  it('answers a repeated request with the stored reply, without running the handler again', async () => {
    const ref = randomUUID();
    type Quote = { ref: string; quote: string; total: number };
    const first = await request<Quote>('order.quote', { ref, amount: 21 }, ref);
    const repeat = await request<Quote>('order.quote', { ref, amount: 21 }, ref);
    // The reply holds a fresh UUID per run: only the stored reply can equal it.
    expect(first).toEqual({ ref, quote: expect.any(String), total: 42 });
    expect(repeat).toEqual(first);
    expect(await effectCount(db.pool, 'order.quote', ref)).toBe(1);
  });

  it("answers a duplicate request that arrives while the first runs with the in-progress problem ('reject')", async () => {
    held = new Promise((resolve) => (release = resolve));
    const ref = randomUUID();
    type Reservation = { ref: string; reservation: string };
    const first = request<Reservation>('order.reserve', { ref }, ref);
    await waitFor(async () => (await effectCount(db.pool, 'order.reserve', ref)) === 1, 'the first run');
    // The library's error reaches the caller as its problem document, as an RPC error.
    await expect(request('order.reserve', { ref }, ref)).rejects.toEqual({
      type: PROBLEM_TYPE_BASE + 'request-in-progress',
      title: expect.any(String),
      status: 409,
      detail: expect.any(String),
    });
    release();
    const reply = await first;
    expect(await request('order.reserve', { ref }, ref)).toEqual(reply);
    expect(await effectCount(db.pool, 'order.reserve', ref)).toBe(1);
  });

  it('keys messages without a header by the event id in their payload (a key extractor)', async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    for (const eventId of [a, a, b, a, a]) subjects.publishEvent('invoice.paid', { ref: eventId, eventId });
    await seen.until({ event: 'acked', pattern: subjects.subject('invoice.paid') }, 5);
    expect(await effectsOf(db.pool, 'invoice.paid', [a, b])).toEqual({ [a]: 1, [b]: 1 });
  });

  it('refuses a message without a key without running its handler', async () => {
    const ref = randomUUID();
    subjects.publishEvent('order.placed', { ref });
    subjects.publishEvent('invoice.paid', { ref });
    await seen.until({ event: 'refused', pattern: subjects.subject('order.placed'), error: 'MissingMessageKeyError' });
    await seen.until({ event: 'refused', pattern: subjects.subject('invoice.paid'), error: 'MissingMessageKeyError' });
    expect(await effectCount(db.pool, 'order.placed', ref)).toBe(0);
    expect(await effectCount(db.pool, 'invoice.paid', ref)).toBe(0);
  });

  describe('a hybrid application (HTTP, with the consumer connected to it)', () => {
    /** Runs `body` against a hybrid app on subjects of its own, so that no other consumer takes part. */
    async function withHybrid(
      hybrid: 'inherit' | 'separate',
      body: (subjects: TestSubjects, seen: Observations) => Promise<void>,
    ): Promise<void> {
      const own = await TestSubjects.create(`nats-hybrid-${hybrid}`);
      const observed = new Observations();
      const app = await startConsumer(settings({ queue: own.prefix, hybrid }), observed.add);
      try {
        await body(own, observed);
      } finally {
        await app.close();
        await own.close();
      }
    }

    it('refuses messages when the microservice does not inherit the global interceptor, rather than run them unguarded', async () => {
      await withHybrid('separate', async (own, observed) => {
        const ref = randomUUID();
        for (let i = 0; i < 2; i++) own.publishEvent('order.placed', { ref }, ref);
        await observed.until({ event: 'refused', id: ref, error: 'UnguardedMessageError' }, 2);
        expect(await effectCount(db.pool, 'order.placed', ref)).toBe(0);
      });
    });

    it('guards them when the microservice inherits the application configuration', async () => {
      await withHybrid('inherit', async (own, observed) => {
        const ref = randomUUID();
        for (let i = 0; i < 2; i++) own.publishEvent('order.placed', { ref }, ref);
        await observed.until({ event: 'acked', id: ref }, 2);
        expect(await effectCount(db.pool, 'order.placed', ref)).toBe(1);
      });
    });
  });

  describe('two consumer processes in one queue group', () => {
    const processes: ConsumerProcess[] = [];

    afterAll(async () => {
      await Promise.all(processes.map((member) => member.stop()));
    });

    it('runs each id once when its duplicates are spread over both processes', async () => {
      // Subjects of their own, so that the consumer in the test process does not take part.
      const group = await TestSubjects.create('nats-group');
      try {
        const extra = { queue: group.prefix, workMs: 50 };
        processes.push(...(await Promise.all([1, 2].map(() => startConsumerProcess(settings(extra))))));
        const refs = Array.from({ length: 8 }, () => randomUUID());
        const copies = 5;
        for (const ref of refs) {
          for (let i = 0; i < copies; i++) {
            group.publishEvent('order.placed', { ref }, ref);
            group.publishEvent('payment.captured', { ref }, ref);
          }
        }
        await group.flush();
        const total = refs.length * copies * 2;
        const acked = () => processes.reduce((sum, member) => sum + member.observations.count({ event: 'acked' }), 0);
        await waitFor(() => Promise.resolve(acked() === total), `${total} acks`, 30_000);
        const once = Object.fromEntries(refs.map((ref) => [ref, 1]));
        expect(await effectsOf(db.pool, 'order.placed', refs)).toEqual(once);
        expect(await effectsOf(db.pool, 'payment.captured', refs)).toEqual(once);
        // The duplicates really met on both processes: some id was delivered to each.
        const metOnBoth = refs.filter((ref) =>
          processes.every((member) => member.observations.count({ event: 'acked', id: ref }) > 0),
        );
        expect(metOnBoth.length).toBeGreaterThan(0);
      } finally {
        await group.close();
      }
    });
  });
});
