import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { type RecordIdentity, RedisIdempotencyStore } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { type HttpResult, post } from '../support/http.js';
import { deleteKeys } from '../support/redis-store.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

const describeRedis = await describeWithBrokers(['redis']);

function expectProblem(response: HttpResult, status: number): void {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
}

/**
 * The sample app with IDEMPOTENCY_STORE=redis: its lease-mode route (POST /emails) keeps
 * its records in Redis, its transactional route (POST /payments) in PostgreSQL, and the
 * HTTP contract is the one of sample-app.spec.ts.
 */
describeRedis('sample app on the Redis store (IDEMPOTENCY_STORE=redis)', () => {
  let db: TestDatabase;
  let redis: Redis;
  let store: RedisIdempotencyStore;
  const apps: SampleProcess[] = [];
  const bullPrefix = `sample-redis-${randomUUID().slice(0, 8)}`;
  const keyPrefix = `${bullPrefix}:idempotency:`;
  const env = () => ({
    DATABASE_URL: db.url,
    REDIS_URL: BROKER_URLS.redis,
    BULLMQ_PREFIX: bullPrefix,
    IDEMPOTENCY_STORE: 'redis',
    PROVIDER_LATENCY_MS: '300',
  });

  const count = async (table: 'payments' | 'emails', user: string) =>
    (await db.pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE user_id = $1`, [user])).rows[0].n as number;
  const rows = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows;
  const inRedis = (scope: string, route: string, key: string) => {
    const identity: RecordIdentity = { scope, method: 'POST', route, key };
    return store.find(identity);
  };
  const user = () => 'user-' + randomUUID().slice(0, 8);

  beforeAll(async () => {
    db = await createTestDatabase({ migrate: false });
    redis = new Redis(BROKER_URLS.redis);
    store = new RedisIdempotencyStore(redis, { keyPrefix });
    apps.push(await startSampleApp(env()), await startSampleApp(env()));
  }, 120_000);
  afterAll(async () => {
    for (const app of apps) await app.kill();
    await store?.onApplicationShutdown();
    await deleteKeys(redis, `${bullPrefix}:`);
    await redis?.quit();
    await db?.drop();
  });

  it('queues an e-mail once (202), rejects a parallel duplicate with 409, replays; the record is in Redis only', async () => {
    const [a, b] = apps;
    const caller = user();
    const key = randomUUID();
    const body = { to: 'someone@example.com', subject: 'Your receipt' };
    const first = post(a.url, '/emails', { key, user: caller, body });
    await waitFor(async () => (await inRedis(caller, '/emails', key)) !== null, 'the first request to claim its key');
    // The duplicate goes to the other process: the claim is shared through Redis.
    const duplicate = await post(b.url, '/emails', { key, user: caller, body });
    expectProblem(duplicate, 409);
    expect(duplicate.headers.get('retry-after')).toBe('1');
    const original = await first;
    expect(original.status).toBe(202);
    expect(original.json).toEqual({ id: expect.any(String), status: 'queued' });
    const retry = await post(b.url, '/emails', { key, user: caller, body });
    expect(retry.status).toBe(202);
    expect(retry.text).toBe(original.text);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await count('emails', caller)).toBe(1);
    expect(await inRedis(caller, '/emails', key)).toMatchObject({ status: 'completed', response: { status: 202 } });
    expect(await rows(key)).toHaveLength(0);

    expectProblem(await post(a.url, '/emails', { key, user: caller, body: { ...body, subject: 'other' } }), 422);
    expectProblem(
      await post(a.url, '/emails', { key: randomUUID(), user: caller, body: { to: 'x', subject: 'x' } }),
      400,
    );
  });

  it('keeps the transactional POST /payments in PostgreSQL: 40 parallel duplicates over two processes, one payment', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { amount: 1999, currency: 'EUR', card: '4242424242424242' };
    const responses = await Promise.all(
      Array.from({ length: 40 }, (_, i) => post(apps[i % 2].url, '/payments', { key, user: caller, body })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(40).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(Object.keys(responses[0].json)).toEqual(['id', 'amount', 'currency', 'status', 'createdAt']);
    expect(await count('payments', caller)).toBe(1);
    expect(await rows(key)).toMatchObject([{ status: 'completed', scope: caller }]);
    expect(await inRedis(caller, '/payments', key)).toBeNull();
  });

  it('refuses to start with IDEMPOTENCY_STORE=redis and no REDIS_URL, or an unknown store', async () => {
    await expect(startSampleApp({ ...env(), REDIS_URL: '' })).rejects.toThrow(
      /IDEMPOTENCY_STORE=redis needs REDIS_URL/,
    );
    await expect(startSampleApp({ ...env(), IDEMPOTENCY_STORE: 'mongo' })).rejects.toThrow(
      /IDEMPOTENCY_STORE must be "postgres", "redis" or "pool"/,
    );
  });
});
