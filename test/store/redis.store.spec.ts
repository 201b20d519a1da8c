import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { Cluster, Redis } from 'ioredis';
import { RedisIdempotencyStore, type RedisClient } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { LocalRedisCluster } from '../support/redis-servers.js';
import { advanceRedisClock, deleteKeys, testPrefix } from '../support/redis-store.js';
import {
  describeStoreContract,
  HOUR,
  identity,
  request,
  RESPONSE,
  type StoreHarness,
  won,
} from '../../lib/testing/index.js';

const describeRedis = await describeWithBrokers(['redis']);

/** A harness on `client`: an empty store is a fresh key prefix, deleted after the scenario. */
function harnessOn(client: () => RedisClient): () => Promise<StoreHarness> {
  return () => {
    const prefix = testPrefix('contract');
    const store = new RedisIdempotencyStore(client(), { keyPrefix: prefix });
    return Promise.resolve({
      store,
      expiresNatively: true,
      advance: (ms) => advanceRedisClock(client(), prefix, ms),
      teardown: async () => {
        await store.onApplicationShutdown();
        await deleteKeys(client(), prefix);
      },
    });
  };
}

describeRedis('Redis store on one server', () => {
  let client: Redis;
  beforeAll(() => {
    client = new Redis(BROKER_URLS.redis);
  });
  afterAll(async () => {
    await client?.quit();
  });

  describeStoreContract(
    'Redis, one server',
    harnessOn(() => client),
    { describe, it, beforeEach, afterEach, expect },
  );

  it('keeps a record under one key with a hash tag, expiring when the record stops counting', async () => {
    const prefix = testPrefix('layout');
    const store = new RedisIdempotencyStore(client, { keyPrefix: prefix });
    try {
      const id = identity();
      const claim = request(id, { leaseMs: 30_000, ttlMs: HOUR });
      won(await store.claim(claim));
      const key = store.keyOf(id);
      expect(key).toMatch(new RegExp(`^${prefix}\\{[A-Za-z0-9_-]{43}\\}$`));
      expect(await client.keys(`${prefix}*`)).toEqual([key]);
      // In progress: the later of lease end and expiry (the lifetime here).
      expect(await client.pttl(key)).toBeGreaterThan(HOUR - 5000);
      expect(await store.complete(id, claim.ownerToken, RESPONSE, 90_000)).toBe(true);
      const ttl = await client.pttl(key);
      expect(ttl).toBeGreaterThan(85_000);
      expect(ttl).toBeLessThanOrEqual(90_000);
      expect(await client.hget(key, 'i')).toBe(JSON.stringify([id.scope, id.method, id.route, id.key]));
    } finally {
      await store.onApplicationShutdown();
      await deleteKeys(client, prefix);
    }
  });

  it('loads its scripts again after SCRIPT FLUSH (EVALSHA falls back to EVAL)', async () => {
    const prefix = testPrefix('noscript');
    const store = new RedisIdempotencyStore(client, { keyPrefix: prefix });
    try {
      const claim = request(identity());
      won(await store.claim(claim));
      await client.script('FLUSH');
      expect(await store.renew(claim.identity, claim.ownerToken, 30_000)).toBe(true);
      expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
    } finally {
      await store.onApplicationShutdown();
      await deleteKeys(client, prefix);
    }
  });

  it('purgeExpired() validates its options and returns 0: Redis expires the records itself', async () => {
    const store = new RedisIdempotencyStore(client, { keyPrefix: testPrefix('purge') });
    await expect(store.purgeExpired({ batchSize: 0 })).rejects.toThrow(/batchSize/);
    expect(await store.purgeExpired()).toBe(0);
  });

  it('creates its own connection from a URL and closes it at shutdown', async () => {
    const prefix = testPrefix('url');
    const store = await RedisIdempotencyStore.create({ connection: BROKER_URLS.redis, keyPrefix: prefix });
    await store.verify();
    expect((await store.sharedSecret()).length).toBe(32);
    expect(await deleteKeys(client, prefix)).toBe(1); // the secret; verify() left nothing behind
    await store.onApplicationShutdown();
    await expect(store.client.ping()).rejects.toThrow(/Connection is closed/);
  });

  it('refuses a key prefix with braces, which would break the hash tags', () => {
    expect(() => new RedisIdempotencyStore(client, { keyPrefix: 'a{b}:' })).toThrow(/braces/);
  });
});

describeRedis('Redis store on a Redis Cluster of three masters', () => {
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

  describeStoreContract(
    'Redis Cluster',
    harnessOn(() => client),
    { describe, it, beforeEach, afterEach, expect },
  );

  it('spreads records over the masters, each script on the node that holds its key', async () => {
    const prefix = testPrefix('spread');
    const store = new RedisIdempotencyStore(client, { keyPrefix: prefix });
    try {
      const claims = Array.from({ length: 30 }, () => request(identity()));
      for (const claim of claims) won(await store.claim(claim));
      for (const claim of claims) {
        expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
      }
      const perNode = await Promise.all(client.nodes('master').map((node) => node.dbsize()));
      expect(perNode.filter((count) => count > 0).length).toBe(3);
      for (const claim of claims) expect((await store.find(claim.identity))?.response).toEqual(RESPONSE);
    } finally {
      await store.onApplicationShutdown();
      await deleteKeys(client, prefix);
    }
  });
});
