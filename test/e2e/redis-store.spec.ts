import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Controller, Module, Post } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { type Cluster, Redis } from 'ioredis';
import { Idempotent, IdempotencyModule, type RedisClient, RedisIdempotencyStore } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { type ChildApp, startChildApp } from '../support/child-app.js';
import { waitFor } from '../support/cluster.js';
import { post } from '../support/http.js';
import { expectProblem } from '../support/problems.js';
import { redisAppModule, runsKey } from '../support/redis-app.js';
import { deleteKeys, testPrefix } from '../support/redis-store.js';
import { LocalRedisCluster } from '../support/redis-servers.js';
import { type Platform, PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

const describeRedis = await describeWithBrokers(['redis']);
const REDIS = BROKER_URLS.redis;

/** The record of a key, as the app's store sees it (scope = X-User-Id). */
async function recordOf(redis: RedisClient, prefix: string, route: string, key: string, user = 'anonymous') {
  const store = new RedisIdempotencyStore(redis, { keyPrefix: prefix });
  try {
    return await store.find({ scope: user, method: 'POST', route, key });
  } finally {
    await store.onApplicationShutdown();
  }
}

describeRedis('the Redis store over HTTP', () => {
  let redis: Redis;
  beforeAll(() => {
    redis = new Redis(REDIS);
  });
  afterAll(async () => {
    await redis?.quit();
  });

  const runs = async (prefix: string, route: string, key: string) =>
    Number((await redis.get(runsKey(prefix, route, key))) ?? 0);

  /** HTTP semantics on one application whose store talks to `connection()` (default: the machine's Redis). */
  function semantics(title: string, platform: Platform, connection?: () => RedisClient) {
    describe(title, () => {
      const prefix = testPrefix(`e2e-${platform}`);
      let running: RunningApp;
      let base: string;

      beforeAll(async () => {
        // A notification, not the fallback poll, must wake a waiting duplicate: the poll is 5 s here.
        running = await startApp(
          redisAppModule({
            redisUrl: REDIS,
            connection: connection?.(),
            prefix,
            options: { leaseMs: 2000 },
            store: { fallbackPollMs: 5000 },
          }),
          platform,
        );
        base = running.url;
      });
      afterAll(async () => {
        await running?.close();
        await deleteKeys(redis, prefix);
      });

      it('runs once and replays status, body and headers; the record is in Redis', async () => {
        const key = randomUUID();
        const first = await post(base, '/charges', { key, body: { amount: 1000 } });
        expect(first.status).toBe(201);
        expect(first.headers.get('idempotent-replayed')).toBeNull();
        const retry = await post(base, '/charges', { key, body: { amount: 1000 } });
        expect(retry.status).toBe(201);
        expect(retry.text).toBe(first.text);
        expect(retry.headers.get('content-type')).toBe(first.headers.get('content-type'));
        expect(retry.headers.get('idempotent-replayed')).toBe('true');
        expect(await runs(prefix, 'charges', key)).toBe(1);
        const record = await recordOf(connection?.() ?? redis, prefix, '/charges', key);
        expect(record).toMatchObject({
          status: 'completed',
          ownerToken: null,
          response: { status: 201, body: first.text },
        });
      });

      it('answers 422 to the same key with another payload, and runs nothing', async () => {
        const key = randomUUID();
        expect((await post(base, '/charges', { key, body: { amount: 1 } })).status).toBe(201);
        expectProblem(await post(base, '/charges', { key, body: { amount: 2 } }), 422, 'key-reused');
        expect(await runs(prefix, 'charges', key)).toBe(1);
      });

      it("answers 409 with Retry-After to a duplicate of a request in flight ('reject')", async () => {
        const key = randomUUID();
        const first = post(base, '/emails', { key, body: { to: 'a@example.com' }, headers: { 'x-delay-ms': '800' } });
        await waitFor(
          async () => (await recordOf(connection?.() ?? redis, prefix, '/emails', key)) !== null,
          'the first claim',
        );
        const duplicate = await post(base, '/emails', { key, body: { to: 'a@example.com' } });
        expectProblem(duplicate, 409, 'request-in-progress');
        expect(duplicate.headers.get('retry-after')).toMatch(/^\d+$/);
        expect((await first).status).toBe(201);
        expect(await runs(prefix, 'emails', key)).toBe(1);
      });

      it("wakes a waiting duplicate when the first completes ('wait'), well before the 5 s fallback poll", async () => {
        const key = randomUUID();
        const first = post(base, '/charges', { key, body: { amount: 5 }, headers: { 'x-delay-ms': '700' } });
        await waitFor(
          async () => (await recordOf(connection?.() ?? redis, prefix, '/charges', key)) !== null,
          'the first claim',
        );
        const started = Date.now();
        const duplicates = await Promise.all(
          Array.from({ length: 10 }, () => post(base, '/charges', { key, body: { amount: 5 } })),
        );
        const waited = Date.now() - started;
        const original = await first;
        expect(original.status).toBe(201);
        for (const duplicate of duplicates) {
          expect(duplicate.status).toBe(201);
          expect(duplicate.text).toBe(original.text);
          expect(duplicate.headers.get('idempotent-replayed')).toBe('true');
        }
        expect(waited).toBeLessThan(3000);
        expect(await runs(prefix, 'charges', key)).toBe(1);
      });

      it('stores a 4xx and replays it; releases a 5xx, so that a retry runs again', async () => {
        const key = randomUUID();
        const notFound = await post(base, '/fail/404', { key });
        const notFoundAgain = await post(base, '/fail/404', { key });
        expect([notFound.status, notFoundAgain.status]).toEqual([404, 404]);
        expect(notFoundAgain.text).toBe(notFound.text);
        expect(notFoundAgain.headers.get('idempotent-replayed')).toBe('true');
        expect(await runs(prefix, 'fail-404', key)).toBe(1);

        const other = randomUUID();
        const unavailable = await post(base, '/fail/503', { key: other });
        expect(await recordOf(connection?.() ?? redis, prefix, '/fail/:status', other)).toBeNull();
        const unavailableAgain = await post(base, '/fail/503', { key: other });
        expect([unavailable.status, unavailableAgain.status]).toEqual([503, 503]);
        expect(unavailableAgain.headers.get('idempotent-replayed')).toBeNull();
        expect(await runs(prefix, 'fail-503', other)).toBe(2);
      });

      it('keeps keys apart per caller: the same key of another user runs on its own', async () => {
        const key = randomUUID();
        const alice = await post(base, '/charges', { key, user: 'alice', body: { amount: 7 } });
        const bob = await post(base, '/charges', { key, user: 'bob', body: { amount: 7 } });
        expect(bob.headers.get('idempotent-replayed')).toBeNull();
        expect(bob.json.id).not.toBe(alice.json.id);
      });
    });
  }

  for (const platform of PLATFORMS) semantics(`one application (${platform})`, platform);

  describe('on a Redis Cluster of three masters', () => {
    let cluster: LocalRedisCluster;
    let client: Cluster;
    beforeAll(async () => {
      cluster = await LocalRedisCluster.start(3);
      client = cluster.client();
    }, 60_000);
    afterAll(async () => {
      await deleteKeys(client, 'idem-e2e-');
      await client?.quit();
      await cluster?.stop();
    });
    semantics('one application (express)', 'express', () => client);
  });

  it('refuses a transactional route at start-up: the Redis store has no transactions', async () => {
    @Controller()
    class TransactionalController {
      @Post('payments')
      @Idempotent({ transactional: true })
      create() {
        return {};
      }
    }
    const prefix = testPrefix('tx');
    @Module({
      imports: [IdempotencyModule.forRoot({ redis: { connection: REDIS, keyPrefix: prefix } })],
      controllers: [TransactionalController],
    })
    class TransactionalApp {}
    await expect(startApp(TransactionalApp, 'express')).rejects.toThrow(
      /TransactionalController\.create is transactional, but RedisIdempotencyStore has no transactions/,
    );
    await deleteKeys(redis, prefix); // the fingerprint secret, written while the module started
  });

  /** Processes of redis-app-process.ts on the machine's Redis, or on a cluster (`cluster()` gives it). */
  function processes(title: string, cluster?: () => { nodes: string; client: Cluster }) {
    describe(title, () => {
      const prefix = testPrefix('processes');
      const store = () => cluster?.().client ?? redis;
      const started: ChildApp[] = [];

      async function start(count: number, env: Record<string, string> = {}): Promise<{ app: ChildApp; url: string }[]> {
        const apps = await Promise.all(
          Array.from({ length: count }, (_, i) =>
            startChildApp('redis-app-process', `redis-app-${started.length + i}`, {
              REDIS_URL: REDIS,
              KEY_PREFIX: prefix,
              ...(cluster && { REDIS_CLUSTER_NODES: cluster().nodes }),
              ...env,
            }),
          ),
        );
        started.push(...apps);
        return Promise.all(
          apps.map(async (app) => {
            expect(app.output()).toContain('typeorm cannot load');
            const [, port] = await app.waitForOutput(/listening on port (\d+)/);
            return { app, url: `http://127.0.0.1:${port}` };
          }),
        );
      }

      afterEach(async () => {
        for (const app of started.splice(0)) await app.stop('SIGKILL');
      });
      afterAll(async () => {
        await deleteKeys(redis, prefix);
        if (cluster) await deleteKeys(cluster().client, prefix);
      });

      it('runs a charge once for 200 parallel duplicates over three processes, all answered alike', async () => {
        const instances = await start(3);
        const key = randomUUID();
        const responses = await Promise.all(
          Array.from({ length: 200 }, (_, i) =>
            post(instances[i % 3].url, '/charges', { key, body: { amount: 42 }, headers: { 'x-delay-ms': '300' } }),
          ),
        );
        expect(responses.map((r) => r.status)).toEqual(Array(200).fill(201));
        expect(new Set(responses.map((r) => r.text)).size).toBe(1);
        expect(responses.filter((r) => r.headers.get('idempotent-replayed') === null)).toHaveLength(1);
        expect(await runs(prefix, 'charges', key)).toBe(1);
      }, 120_000);

      it('takes over the key of a process killed with SIGKILL once its lease lapses', async () => {
        const [a, b] = await start(2, { LEASE_MS: '1000' });
        const key = randomUUID();
        const body = { amount: 99 };
        const doomed = post(a.url, '/charges', { key, body, headers: { 'x-delay-ms': '60000' } }).catch(
          (error: unknown) => error,
        );
        await waitFor(async () => (await runs(prefix, 'charges', key)) === 1, 'the first run');
        await a.app.stop('SIGKILL');
        expect(await doomed).toMatchObject({ message: 'fetch failed' });
        const held = await recordOf(store(), prefix, '/charges', key);
        expect(held).toMatchObject({ status: 'in_progress' });

        // 'wait': the duplicate waits out the dead owner's lease, then takes the key over and runs.
        const successor = await post(b.url, '/charges', { key, body });
        expect(successor.status).toBe(201);
        expect(successor.headers.get('idempotent-replayed')).toBeNull();
        expect(successor.json.pid).toBe(b.app.child.pid);
        expect(await runs(prefix, 'charges', key)).toBe(2);
        const record = await recordOf(store(), prefix, '/charges', key);
        expect(record).toMatchObject({ status: 'completed', fingerprint: held!.fingerprint });

        const retry = await post(b.url, '/charges', { key, body });
        expect(retry.text).toBe(successor.text);
        expect(retry.headers.get('idempotent-replayed')).toBe('true');
        expect(await runs(prefix, 'charges', key)).toBe(2);
      }, 60_000);
    });
  }

  processes('several processes on one Redis (no TypeORM, no pg loaded)');

  describe('several processes on a Redis Cluster of three masters', () => {
    let cluster: LocalRedisCluster;
    let client: Cluster;
    beforeAll(async () => {
      cluster = await LocalRedisCluster.start(3);
      client = cluster.client();
    }, 60_000);
    afterAll(async () => {
      await client?.quit();
      await cluster?.stop();
    });
    processes('processes (no TypeORM, no pg loaded)', () => ({
      nodes: cluster.ports.map((port) => `127.0.0.1:${port}`).join(','),
      client,
    }));
  });
});
