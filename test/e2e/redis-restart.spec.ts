import { afterAll, afterEach, beforeAll, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { RedisIdempotencyStore } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { waitFor } from '../support/cluster.js';
import { post } from '../support/http.js';
import { expectProblem } from '../support/problems.js';
import { redisAppModule, runsKey } from '../support/redis-app.js';
import { PrivateRedis } from '../support/redis-servers.js';
import { deleteKeys, testPrefix } from '../support/redis-store.js';
import { type RunningApp, startApp } from '../support/test-app.js';

const describeRedis = await describeWithBrokers(['redis']);

/**
 * What a Redis restart does to the records, on a private redis-server that the test kills
 * (SIGKILL: a crash, nothing saved on the way out) and starts again on the same port, while
 * one request is in flight and another key is completed. The run counters live on the
 * machine's Redis, which the restart does not touch.
 */
describeRedis('a Redis restart with keys in flight', () => {
  let counters: Redis;
  const runsPrefix = testPrefix('restart-runs');
  beforeAll(() => {
    counters = new Redis(BROKER_URLS.redis);
  });
  afterAll(async () => {
    await deleteKeys(counters, runsPrefix);
    await counters?.quit();
  });

  let server: PrivateRedis;
  let running: RunningApp;
  afterEach(async () => {
    await running?.close();
    await server?.stop();
  });

  const runs = async (route: string, key: string) => Number((await counters.get(runsKey(runsPrefix, route, key))) ?? 0);

  async function scenario(serverArgs: string[]) {
    server = await PrivateRedis.start(serverArgs);
    const prefix = runsPrefix; // the store's keys on the private server, the counters on the shared one
    running = await startApp(
      redisAppModule({ redisUrl: server.url, runsUrl: BROKER_URLS.redis, prefix, options: { leaseMs: 3000 } }),
      'express',
    );
    const base = running.url;
    const direct = new Redis(server.url);
    const store = new RedisIdempotencyStore(direct, { keyPrefix: prefix });
    try {
      const completedKey = randomUUID();
      const completed = await post(base, '/charges', { key: completedKey, body: { amount: 1 } });
      expect(completed.status).toBe(201);
      const secret = await direct.get(`${prefix}fingerprint-secret`);
      expect(secret).not.toBeNull();

      const inFlightKey = randomUUID();
      const inFlight = post(base, '/charges', {
        key: inFlightKey,
        body: { amount: 2 },
        headers: { 'x-delay-ms': '1500' },
      });
      await waitFor(async () => (await runs('charges', inFlightKey)) === 1, 'the in-flight run');
      const identity = { scope: 'anonymous', method: 'POST', route: '/charges', key: inFlightKey };
      expect(await store.find(identity)).toMatchObject({ status: 'in_progress' });

      await server.restart();

      const original = await inFlight;
      // The store's connection is back, and the instance wrote the secret it had read back (SET NX).
      await waitFor(
        async () => (await direct.get(`${prefix}fingerprint-secret`).catch(() => null)) !== null,
        'the secret',
      );
      const after = {
        originalStatus: original.status,
        inFlightRecord: (await store.find(identity))?.status ?? null,
        secretKept: (await direct.get(`${prefix}fingerprint-secret`)) === secret,
      };
      const retryInFlight = await post(base, '/charges', { key: inFlightKey, body: { amount: 2 } });
      const retryCompleted = await post(base, '/charges', { key: completedKey, body: { amount: 1 } });
      return {
        ...after,
        original,
        retryInFlight,
        retryCompleted,
        completed,
        inFlightRuns: await runs('charges', inFlightKey),
        completedRuns: await runs('charges', completedKey),
      };
    } finally {
      await store.onApplicationShutdown();
      direct.disconnect();
    }
  }

  it('without persistence: Redis forgets every key, in flight or completed, and retries run again', async () => {
    const seen = await scenario([]);
    // The original still answered with its handler's result (lease mode answers even when storing fails) ...
    expect(seen.originalStatus).toBe(201);
    // ... but its completion found no record (fenced out): the key is free.
    expect(seen.inFlightRecord).toBeNull();
    expect(seen.retryInFlight.status).toBe(201);
    expect(seen.retryInFlight.headers.get('idempotent-replayed')).toBeNull();
    expect(seen.retryInFlight.json.id).not.toBe(seen.original.json.id);
    expect(seen.inFlightRuns).toBe(2);
    // The completed key is gone too: its retry ran the handler a second time.
    expect(seen.retryCompleted.headers.get('idempotent-replayed')).toBeNull();
    expect(seen.retryCompleted.json.id).not.toBe(seen.completed.json.id);
    expect(seen.completedRuns).toBe(2);
    // The fingerprint secret came back: the running instance wrote it again when it reconnected.
    expect(seen.secretKept).toBe(true);
  }, 60_000);

  it('while Redis is down, a request gets 503 (store unavailable) by its deadline, and runs once Redis is back', async () => {
    server = await PrivateRedis.start();
    running = await startApp(
      redisAppModule({
        redisUrl: server.url,
        runsUrl: BROKER_URLS.redis,
        prefix: runsPrefix,
        options: { waitTimeoutMs: 1500, retryAfterSeconds: 2 },
      }),
      'express',
    );
    await server.kill();
    const key = randomUUID();
    const started = Date.now();
    const down = await post(running.url, '/charges', { key, body: { amount: 3 } });
    const took = Date.now() - started;
    expectProblem(down, 503, 'store-unavailable');
    expect(down.headers.get('retry-after')).toBe('2');
    expect(took).toBeLessThan(5000);
    expect(await runs('charges', key)).toBe(0);

    await server.restart();
    await waitFor(
      async () => (await post(running.url, '/charges', { key, body: { amount: 3 } })).status === 201,
      'a 201',
    );
    expect(await runs('charges', key)).toBe(1);
  }, 60_000);

  it('with appendonly yes and appendfsync always: every key survives, and the in-flight request completes', async () => {
    const seen = await scenario(['--appendonly', 'yes', '--appendfsync', 'always']);
    expect(seen.originalStatus).toBe(201);
    expect(seen.inFlightRecord).toBe('completed');
    expect(seen.retryInFlight.text).toBe(seen.original.text);
    expect(seen.retryInFlight.headers.get('idempotent-replayed')).toBe('true');
    expect(seen.inFlightRuns).toBe(1);
    expect(seen.retryCompleted.text).toBe(seen.completed.text);
    expect(seen.retryCompleted.headers.get('idempotent-replayed')).toBe('true');
    expect(seen.completedRuns).toBe(1);
    expect(seen.secretKept).toBe(true);
  }, 60_000);
});
