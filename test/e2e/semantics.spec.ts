import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { fingerprintOf, IdempotencyService, IdempotencyStore, PROBLEM_TYPE_BASE } from '../../lib/index.js';
import { admin, createTestDatabase, type TestDatabase } from '../support/database.js';
import { type HttpResult, post, send } from '../support/http.js';
import { Calls, probeModule } from '../support/probe-app.js';
import { PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

function expectProblem(response: HttpResult, status: number, slug: string): void {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(response.json).toMatchObject({ type: PROBLEM_TYPE_BASE + slug, status });
  expect(typeof response.json.title).toBe('string');
}

describe.each(PLATFORMS)('idempotency semantics over HTTP (%s)', (platform) => {
  let db: TestDatabase;
  let running: RunningApp;
  let base: string;
  const calls = new Calls();

  const rows = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1 ORDER BY scope', [key])).rows;

  beforeAll(async () => {
    db = await createTestDatabase();
    running = await startApp(probeModule(db.url, calls, { leaseMs: 1000 }), platform);
    base = running.url;
  });

  afterAll(async () => {
    await running?.close();
    await db?.drop();
  });

  describe('replay', () => {
    it('runs the handler once and replays status, headers and body byte for byte', async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      const first = await post(base, '/orders', { key, user: 'alice', body: { item: 'book' } });
      expect(first.status).toBe(201);
      expect(first.headers.get('location')).toBe('/orders/42');
      expect(first.headers.get('set-cookie')).toContain('session=secret');
      expect(first.headers.get('idempotent-replayed')).toBeNull();
      // The handler's key order, not JSONB's.
      expect(first.text.startsWith('{"zeta":1,"alpha":{"b":2.5,"a":[3,"x"]}')).toBe(true);

      for (let i = 0; i < 3; i++) {
        const retry = await post(base, '/orders', { key, user: 'alice', body: { item: 'book' } });
        expect(retry.status).toBe(201);
        expect(retry.text).toBe(first.text);
        expect(retry.headers.get('content-type')).toBe(first.headers.get('content-type'));
        expect(retry.headers.get('location')).toBe('/orders/42');
        expect(retry.headers.get('idempotent-replayed')).toBe('true');
        // Cookies and headers outside the allow-list are never stored.
        expect(retry.headers.get('set-cookie')).toBeNull();
        expect(retry.headers.get('x-not-replayed')).toBeNull();
      }
      expect(calls.count('orders')).toBe(before + 1);

      const [record] = await rows(key);
      expect(record).toMatchObject({ status: 'completed', scope: 'alice', method: 'POST', route: '/orders' });
      expect(record.owner_token).toBeNull();
      expect(record.response).toMatchObject({ status: 201, kind: 'json', body: first.text });
      expect(record.response.headers).toEqual({ location: '/orders/42' });
    });

    it('accepts the quoted structured-field form as the same key', async () => {
      const key = randomUUID();
      const first = await post(base, '/orders', { key, user: 'alice', body: {} });
      const quoted = await post(base, '/orders', { key: `"${key}"`, user: 'alice', body: {} });
      expect(quoted.headers.get('idempotent-replayed')).toBe('true');
      expect(quoted.text).toBe(first.text);
      expect(await rows(key)).toHaveLength(1);
    });

    it('treats the same payload with its keys in another order as the same request', async () => {
      const key = randomUUID();
      const first = await post(base, '/orders', { key, user: 'alice', body: '{"a":1,"b":{"c":2,"d":3}}' });
      const reordered = await post(base, '/orders', { key, user: 'alice', body: '{"b":{"d":3,"c":2},"a":1}' });
      expect(reordered.status).toBe(201);
      expect(reordered.text).toBe(first.text);
    });

    it('replays text (with a NUL), bytes, files and empty responses exactly', async () => {
      for (const path of ['/text', '/binary', '/uint8array', '/file', '/empty', '/date']) {
        const key = randomUUID();
        const name = path.slice(1);
        const before = calls.count(name);
        const first = await fetch(base + path, { method: 'POST', headers: { 'idempotency-key': key } });
        const firstBytes = Buffer.from(await first.arrayBuffer());
        const retry = await fetch(base + path, { method: 'POST', headers: { 'idempotency-key': key } });
        const retryBytes = Buffer.from(await retry.arrayBuffer());
        expect({ path, status: retry.status }).toEqual({ path, status: first.status });
        expect(retryBytes.equals(firstBytes)).toBe(true);
        expect(retry.headers.get('content-type')).toBe(first.headers.get('content-type'));
        expect(retry.headers.get('content-disposition')).toBe(first.headers.get('content-disposition'));
        expect(retry.headers.get('idempotent-replayed')).toBe('true');
        expect(calls.count(name)).toBe(before + 1);
      }
    });

    // In lease mode the effect has happened before the result turned out unsendable: a retry must not run it again.
    it('completes a result that cannot be serialised as not replayable: 500 once, then 410, one execution', async () => {
      const key = randomUUID();
      const before = calls.count('unserialisable');
      expect((await post(base, '/unserialisable', { key })).status).toBe(500);
      expectProblem(await post(base, '/unserialisable', { key }), 410, 'response-not-replayable');
      expect(calls.count('unserialisable')).toBe(before + 1);
      expect((await rows(key))[0]).toMatchObject({ status: 'completed', response: { kind: 'unreplayable' } });
    });

    // A method-level @Idempotent() on @All() guards every method it serves, GET included.
    it('guards every method of an @All() route decorated on the method', async () => {
      expectProblem(await send(base, 'GET', '/all-methods'), 400, 'missing-key');
      const key = randomUUID();
      const before = calls.count('all-methods');
      const first = await send(base, 'GET', '/all-methods', { key });
      const retry = await send(base, 'GET', '/all-methods', { key });
      expect(first.status).toBe(200);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(first.text);
      expect(calls.count('all-methods')).toBe(before + 1);
    });

    it('sends an oversized response once and answers retries with 410 instead of running again', async () => {
      const key = randomUUID();
      const first = await post(base, '/large', { key });
      expect(first.status).toBe(201);
      expect(first.json.data).toHaveLength(2000);
      const retry = await post(base, '/large', { key });
      expectProblem(retry, 410, 'response-not-replayable');
      expect(calls.count('large')).toBe(1);
      expect((await rows(key))[0].response).toMatchObject({ kind: 'unreplayable' });
    });
  });

  describe('keys', () => {
    it('refuses a request without a key with 400 and runs nothing', async () => {
      const before = calls.count('orders');
      const response = await post(base, '/orders', { user: 'alice', body: {} });
      expectProblem(response, 400, 'missing-key');
      expect(calls.count('orders')).toBe(before);
    });

    it.each([
      ['too long', 'k'.repeat(256)],
      ['empty', '""'],
      ['unterminated quote', '"abc'],
      ['bad escape', '"a\\bc"'],
      ['text after the quote', '"abc"def'],
    ])('refuses a malformed key (%s) with 400 and stores nothing', async (_, key) => {
      const before = calls.count('orders');
      const response = await post(base, '/orders', { key, user: 'alice', body: {} });
      expectProblem(response, 400, 'invalid-key');
      expect(calls.count('orders')).toBe(before);
      expect(
        (
          await db.pool.query(
            "SELECT count(*)::int AS n FROM idempotency_keys WHERE scope = 'alice' AND idempotency_key = $1",
            [key],
          )
        ).rows[0].n,
      ).toBe(0);
    });

    it('accepts a key of exactly 255 characters', async () => {
      const key = 'k'.repeat(254) + randomUUID().slice(0, 1);
      expect((await post(base, '/orders', { key, user: 'len', body: {} })).status).toBe(201);
    });

    it('passes requests without a key through untouched when the key is optional', async () => {
      const before = calls.count('optional');
      await post(base, '/optional');
      await post(base, '/optional');
      expect(calls.count('optional')).toBe(before + 2);
      const key = randomUUID();
      await post(base, '/optional', { key });
      const retry = await post(base, '/optional', { key });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(calls.count('optional')).toBe(before + 3);
    });

    it('leaves routes without @Idempotent alone', async () => {
      const key = randomUUID();
      const before = calls.count('plain');
      await post(base, '/plain', { key });
      await post(base, '/plain', { key });
      expect(calls.count('plain')).toBe(before + 2);
      expect(await rows(key)).toHaveLength(0);
    });
  });

  describe('fingerprints and scopes', () => {
    it('answers 422 when the key is reused with a different payload, and runs nothing', async () => {
      const key = randomUUID();
      await post(base, '/orders', { key, user: 'alice', body: { amount: 1 } });
      const before = calls.count('orders');
      const reused = await post(base, '/orders', { key, user: 'alice', body: { amount: 2 } });
      expectProblem(reused, 422, 'key-reused');
      expect(calls.count('orders')).toBe(before);
      expect((await rows(key))[0].status).toBe('completed');
    });

    it('counts path parameters as part of the request: one key cannot serve two resources', async () => {
      const key = randomUUID();
      expect((await post(base, '/refunds/1', { key })).json).toEqual({ refunded: '1' });
      expectProblem(await post(base, '/refunds/2', { key }), 422, 'key-reused');
      expect(calls.count('refunds')).toBe(1);
    });

    it('includes the query string and chosen headers when the route asks for it', async () => {
      const key = randomUUID();
      await post(base, '/with-query?account=1', { key, headers: { 'x-tenant': 'a' } });
      expect((await post(base, '/with-query?account=1', { key, headers: { 'x-tenant': 'a' } })).status).toBe(201);
      expectProblem(
        await post(base, '/with-query?account=2', { key, headers: { 'x-tenant': 'a' } }),
        422,
        'key-reused',
      );
      expectProblem(
        await post(base, '/with-query?account=1', { key, headers: { 'x-tenant': 'b' } }),
        422,
        'key-reused',
      );
      expect(calls.count('with-query')).toBeGreaterThan(0);
    });

    it('never gives one caller the response stored for another', async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      const alice = await post(base, '/orders', { key, user: 'alice', body: { item: 'x' } });
      const bob = await post(base, '/orders', { key, user: 'bob', body: { item: 'x' } });
      expect(bob.status).toBe(201);
      expect(bob.headers.get('idempotent-replayed')).toBeNull();
      expect(bob.json.n).not.toBe(alice.json.n);
      expect(calls.count('orders')).toBe(before + 2);
      expect((await rows(key)).map((row) => row.scope)).toEqual(['alice', 'bob']);
    });
  });

  describe('errors of the handler', () => {
    it('stores a 4xx HttpException and replays it', async () => {
      const key = randomUUID();
      const before = calls.count('fail');
      const first = await post(base, '/fail', { key, body: { status: 404 } });
      expect(first.status).toBe(404);
      const retry = await post(base, '/fail', { key, body: { status: 404 } });
      expect(retry.status).toBe(404);
      expect(retry.text).toBe(first.text);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(calls.count('fail')).toBe(before + 1);
      expect((await rows(key))[0].response).toMatchObject({ kind: 'error', status: 404 });
    });

    it.each([
      ['a 5xx HttpException', { status: 503 }, 503],
      ['an unexpected error', { crash: true }, 500],
      ['a 409 (transient: "not now")', { status: 409 }, 409],
      ['a 429 (transient: "not now")', { status: 429 }, 429],
    ])('releases the key after %s so that a retry runs again', async (_, body, status) => {
      const key = randomUUID();
      const before = calls.count('fail');
      expect((await post(base, '/fail', { key, body })).status).toBe(status);
      expect(await rows(key)).toHaveLength(0);
      const retry = await post(base, '/fail', { key, body });
      expect(retry.status).toBe(status);
      expect(retry.headers.get('idempotent-replayed')).toBeNull();
      expect(calls.count('fail')).toBe(before + 2);
    });

    it('stores nothing when a pipe rejects the request, so the client can fix it and retry with the key', async () => {
      const key = randomUUID();
      const rejected = await post(base, '/validated', { key, body: { valid: false } });
      expect(rejected.status).toBe(400);
      expect(calls.count('validated')).toBe(0);
      expect(await rows(key)).toHaveLength(0);
      const fixed = await post(base, '/validated', { key, body: { valid: true } });
      expect(fixed.status).toBe(201);
      expect(calls.count('validated')).toBe(1);
    });
  });

  describe('client disconnects', () => {
    it('stores the result of a request whose client went away, so that the retry finds it', async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      const aborted = new AbortController();
      const gone = fetch(base + '/orders', {
        method: 'POST',
        headers: { 'idempotency-key': key, 'x-user-id': 'hana', 'content-type': 'application/json' },
        body: JSON.stringify({ delayMs: 300 }),
        signal: aborted.signal,
      }).catch(() => 'aborted');
      await sleep(100);
      aborted.abort();
      expect(await gone).toBe('aborted');
      await sleep(400);
      expect((await rows(key))[0]).toMatchObject({ status: 'completed' });
      const retry = await post(base, '/orders', { key, user: 'hana', body: { delayMs: 300 } });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(calls.count('orders')).toBe(before + 1);
    });
  });

  describe('concurrency', () => {
    it("answers a duplicate 409 with Retry-After while the first runs ('reject'), then replays", async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      const first = post(base, '/orders', { key, body: { delayMs: 400 } });
      await sleep(100);
      const duplicate = await post(base, '/orders', { key, body: { delayMs: 400 } });
      expectProblem(duplicate, 409, 'request-in-progress');
      expect(duplicate.headers.get('retry-after')).toBe('1');
      const original = await first;
      expect(original.status).toBe(201);
      const retry = await post(base, '/orders', { key, body: { delayMs: 400 } });
      expect(retry.text).toBe(original.text);
      expect(calls.count('orders')).toBe(before + 1);
    });

    it("runs the handler once for 50 parallel duplicates and gives every one the same response ('wait')", async () => {
      const key = randomUUID();
      const before = calls.count('wait');
      const responses = await Promise.all(
        Array.from({ length: 50 }, () => post(base, '/wait', { key, user: 'carol', body: { delayMs: 300 } })),
      );
      expect(calls.count('wait')).toBe(before + 1);
      expect(new Set(responses.map((r) => r.status))).toEqual(new Set([201]));
      expect(new Set(responses.map((r) => r.text)).size).toBe(1);
      expect(responses.filter((r) => r.headers.get('idempotent-replayed') === 'true')).toHaveLength(49);
    });

    it('gives up waiting after waitTimeoutMs with 409', async () => {
      const key = randomUUID();
      const first = post(base, '/wait-briefly', { key, body: { delayMs: 1500 } });
      await sleep(100);
      const started = Date.now();
      const duplicate = await post(base, '/wait-briefly', { key, body: { delayMs: 1500 } });
      expectProblem(duplicate, 409, 'request-in-progress');
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      expect((await first).status).toBe(201);
      expect(calls.count('wait-briefly')).toBe(1);
    });

    it('lets one waiter take over when the first request fails, never two at once', async () => {
      const key = randomUUID();
      const before = calls.count('wait');
      calls.maxConcurrent = 0;
      const responses = await Promise.all(
        Array.from({ length: 5 }, () =>
          post(base, '/wait', { key, user: 'dave', body: { delayMs: 150, status: 503 } }),
        ),
      );
      // Each failure released the key, so each waiter ran in turn, one at a time.
      expect(responses.map((r) => r.status)).toEqual([503, 503, 503, 503, 503]);
      expect(calls.count('wait')).toBe(before + 5);
      expect(calls.maxConcurrent).toBe(1);
      expect(await rows(key)).toHaveLength(0);
    });
  });

  describe('leases, expiry and purge', () => {
    const insertAbandoned = async (key: string, body: unknown, lapsed: boolean) => {
      const owner = randomUUID();
      await db.pool.query(
        `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at)
         VALUES ('erin', 'POST', '/orders', $1, $2, 'in_progress', $3, now() + $4::interval, now() + interval '1 day')`,
        [
          key,
          fingerprintOf({ body, query: {} }, await running.app.get(IdempotencyStore).sharedSecret()),
          owner,
          lapsed ? '-1 second' : '1 minute',
        ],
      );
      return owner;
    };

    it('answers 409 while a live lease holds the key, and takes over once it has lapsed', async () => {
      const live = randomUUID();
      await insertAbandoned(live, { item: 'y' }, false);
      expectProblem(
        await post(base, '/orders', { key: live, user: 'erin', body: { item: 'y' } }),
        409,
        'request-in-progress',
      );

      const key = randomUUID();
      const deadOwner = await insertAbandoned(key, { item: 'y' }, true);
      const before = calls.count('orders');
      const takeover = await post(base, '/orders', { key, user: 'erin', body: { item: 'y' } });
      expect(takeover.status).toBe(201);
      expect(calls.count('orders')).toBe(before + 1);
      const [record] = await rows(key);
      expect(record.status).toBe('completed');

      // Fencing: the dead owner's token can no longer complete or release the record.
      const store = running.app.get(IdempotencyStore);
      const identity = { scope: 'erin', method: 'POST', route: '/orders', key };
      expect(await store.complete(identity, deadOwner, { status: 500, headers: {}, kind: 'empty' }, 1000)).toBe(false);
      expect(await store.release(identity, deadOwner)).toBe(false);
      expect((await rows(key))[0].response.body).toBe(takeover.text);
    });

    it('refuses to take over an abandoned record for a different payload (422)', async () => {
      const key = randomUUID();
      await insertAbandoned(key, { item: 'y' }, true);
      expectProblem(await post(base, '/orders', { key, user: 'erin', body: { item: 'z' } }), 422, 'key-reused');
    });

    it('renews the lease of a request that runs longer than the lease', async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      // leaseMs is 1000 in this app: without renewal a duplicate would take over at 1 s.
      const first = post(base, '/orders', { key, user: 'frank', body: { delayMs: 2200 } });
      await sleep(1600);
      expectProblem(
        await post(base, '/orders', { key, user: 'frank', body: { delayMs: 2200 } }),
        409,
        'request-in-progress',
      );
      expect((await first).status).toBe(201);
      expect(calls.count('orders')).toBe(before + 1);
    });

    it('runs again once the record has expired', async () => {
      const key = randomUUID();
      await post(base, '/short-lived', { key });
      expect((await post(base, '/short-lived', { key })).headers.get('idempotent-replayed')).toBe('true');
      await sleep(400);
      const afterExpiry = await post(base, '/short-lived', { key });
      expect(afterExpiry.headers.get('idempotent-replayed')).toBeNull();
      expect(afterExpiry.json.ran).toBe(2);
    });

    it('purges expired records in batches and keeps live ones', async () => {
      await db.pool.query(
        `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at)
         SELECT 'purge', 'POST', '/orders', 'expired-' || i, 'f', 'in_progress', gen_random_uuid(), now() - interval '1 minute', now() - interval '1 second'
         FROM generate_series(1, 25) AS i`,
      );
      const live = randomUUID();
      await post(base, '/orders', { key: live, user: 'purge', body: {} });
      const service = running.app.get(IdempotencyService);
      const deleted = await service.purgeExpired({ batchSize: 10 });
      expect(deleted).toBeGreaterThanOrEqual(25);
      const left = await db.pool.query("SELECT idempotency_key FROM idempotency_keys WHERE scope = 'purge'");
      expect(left.rows.map((row) => row.idempotency_key)).toEqual([live]);
      expect(await service.find({ scope: 'purge', method: 'POST', route: '/orders', key: live })).toMatchObject({
        status: 'completed',
      });
    });
  });

  describe('store outage', () => {
    it('answers 503 and does not run the handler when the database cannot be reached', async () => {
      const key = randomUUID();
      const before = calls.count('orders');
      await admin(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS false`);
      await admin(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db.name}'`);
      try {
        const response = await post(base, '/orders', { key, user: 'gina', body: {} });
        expectProblem(response, 503, 'store-unavailable');
        expect(response.headers.get('retry-after')).toBe('1');
        expect(calls.count('orders')).toBe(before);
      } finally {
        await admin(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`);
      }
      const retry = await post(base, '/orders', { key, user: 'gina', body: {} });
      expect(retry.status).toBe(201);
      expect(calls.count('orders')).toBe(before + 1);
    });
  });
});
