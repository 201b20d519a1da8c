import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import type { NestExpressApplication } from '@nestjs/platform-express';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { IdempotencyModule, IdempotencyService, MemoryIdempotencyStore } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post, rawRequest } from '../support/http.js';
import { calls, defaultScopeModule, hostileModule } from '../support/hostile-app.js';
import { expectProblem } from '../support/problems.js';
import { type AppSetup, type Platform, PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

/** Requests built to break the library: deep bodies, ambiguous keys, unread bodies, broken scope resolvers. */

/** Bodies beyond the default limits, and text and byte bodies read by a parser of each platform. */
const withParsers: AppSetup = {
  fastify: { bodyLimit: 5 * 1024 * 1024 },
  configure(app: INestApplication, platform: Platform) {
    if (platform === 'express') {
      const express = app as NestExpressApplication;
      express.useBodyParser('json', { limit: '5mb' });
      express.useBodyParser('text');
      express.useBodyParser('raw');
    } else {
      // Fastify parses text/plain by itself; octet-stream needs a parser (this one hands over the bytes).
      (app as NestFastifyApplication).useBodyParser('application/octet-stream');
    }
  },
};

const deepJson = (depth: number, leaf: number) => '{"a":'.repeat(depth) + leaf + '}'.repeat(depth);

describe.each(PLATFORMS)('hostile input (%s)', (platform) => {
  let db: TestDatabase;
  let parsed: RunningApp;
  let bare: RunningApp;
  let base: string;

  const rows = async (...keys: string[]) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = ANY($1)', [keys])).rows;

  beforeAll(async () => {
    db = await createTestDatabase();
    parsed = await startApp(hostileModule(db.url), platform, withParsers);
    // The platform's default parsers only, and rawBody: true.
    bare = await startApp(hostileModule(db.url), platform, { options: { rawBody: true } });
    base = parsed.url;
  });

  afterAll(async () => {
    await parsed?.close();
    await bare?.close();
    await db?.drop();
  });

  describe('bodies', () => {
    // JSON.parse gives Infinity for 1e400; written as JSON it would be null, the other request's value.
    it("answers 422, not a replay, to a body whose number JSON would write like another body's", async () => {
      for (const [first, second] of [
        ['{"a":1e400}', '{"a":null}'],
        ['{"a":-0}', '{"a":0}'],
      ]) {
        const key = randomUUID();
        const headers = { 'content-type': 'application/json' };
        expect((await post(base, '/echo', { key, body: first, headers })).status).toBe(201);
        expectProblem(await post(base, '/echo', { key, body: second, headers }), 422, 'key-reused');
      }
    });

    it('fingerprints JSON nested 50,000 levels deep without overflowing: runs once, replays, 422 for another', async () => {
      const key = randomUUID();
      const before = calls.count('echo');
      const body = deepJson(50_000, 1);
      const send = (text: string) => post(base, '/echo', { key, body: text });
      const first = await send(body);
      expect(first.status).toBe(201);
      expect(first.json).toEqual({ run: before + 1, body: 'object' });
      const retry = await send(body);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(first.text);
      expectProblem(await send(deepJson(50_000, 2)), 422, 'key-reused');
      expectProblem(await send(deepJson(49_999, 1)), 422, 'key-reused');
      expect(calls.count('echo')).toBe(before + 1);
    });

    it('refuses a body that no parser read instead of fingerprinting it as empty', async () => {
      const before = calls.count('echo');
      const key = randomUUID();
      const plain = await rawRequest(bare.url, '/echo', {
        headers: { 'idempotency-key': key, 'content-type': 'text/plain' },
        body: 'transfer 9999 to mallory',
      });
      // rawBody: true keeps the bytes of the types Nest parses (JSON, urlencoded) only.
      const bytes = await rawRequest(bare.url, '/echo', {
        headers: { 'idempotency-key': key, 'content-type': 'application/octet-stream' },
        body: Buffer.from([1, 2, 3]),
      });
      if (platform === 'express') {
        expectProblem(plain, 415, 'unparsed-body');
        expectProblem(bytes, 415, 'unparsed-body');
      } else {
        // Fastify parses text/plain by itself (see the next test), and answers 415 on its own,
        // before any route, for a content type it has no parser for (and for a body without
        // one): it never hands an unparsed body to a handler. Asserted to document that.
        expect(bytes.json).toEqual({ statusCode: 415, message: 'Unsupported Media Type' });
        expect(plain.status).toBe(201);
        expect(bytes.status).toBe(415);
      }
      expect(calls.count('echo')).toBe(before + (platform === 'express' ? 0 : 1));
      const stored = await rows(key);
      expect(stored.length).toBe(platform === 'express' ? 0 : 1);
    });

    it('fingerprints a text body: another text with the same key is 422, not a replay', async () => {
      for (const url of platform === 'express' ? [base] : [base, bare.url]) {
        const key = randomUUID();
        const text = (body: string) =>
          rawRequest(url, '/echo', { headers: { 'idempotency-key': key, 'content-type': 'text/plain' }, body });
        const first = await text('transfer 10 to alice');
        expect(first.status).toBe(201);
        expect(first.json.body).toBe('text:transfer 10 to alice');
        expect((await text('transfer 10 to alice')).headers['idempotent-replayed']).toBe('true');
        expectProblem(await text('transfer 9999 to mallory'), 422, 'key-reused');
      }
    });

    it('fingerprints a byte body from its bytes: other bytes with the same key are 422', async () => {
      const key = randomUUID();
      const bytes = (body: Buffer) =>
        rawRequest(base, '/echo', {
          headers: { 'idempotency-key': key, 'content-type': 'application/octet-stream' },
          body,
        });
      const first = await bytes(Buffer.from([1, 2, 3]));
      expect(first.status).toBe(201);
      expect(first.json.body).toBe('bytes:3');
      expect((await bytes(Buffer.from([1, 2, 3]))).text).toBe(first.text);
      expectProblem(await bytes(Buffer.from([1, 2, 4])), 422, 'key-reused');
    });
  });

  describe('keys', () => {
    const withHeaders = (headers: string[]) =>
      rawRequest(base, '/echo', { headers: [...headers, 'Content-Type', 'application/json'], body: '{}' });

    it('refuses a key sent in two header lines, or a list in one, with 400; a quoted comma is one key', async () => {
      const [a, b] = [randomUUID(), randomUUID()];
      const before = calls.count('echo');
      expectProblem(await withHeaders(['Idempotency-Key', a, 'Idempotency-Key', b]), 400, 'invalid-key');
      expectProblem(await withHeaders(['Idempotency-Key', a, 'idempotency-key', a]), 400, 'invalid-key');
      expectProblem(await withHeaders(['Idempotency-Key', `${a}, ${b}`]), 400, 'invalid-key');
      expect(calls.count('echo')).toBe(before);
      expect(await rows(a, b, `${a}, ${b}`, `${a},${b}`)).toEqual([]);

      const quoted = await withHeaders(['Idempotency-Key', `"${a},${b}"`]);
      expect(quoted.status).toBe(201);
      expect((await rows(`${a},${b}`)).length).toBe(1);
      expect(calls.count('echo')).toBe(before + 1);
    });

    it('checks the key before the scope: no key is 400 even when the resolver would throw', async () => {
      expectProblem(await post(base, '/echo', { body: {}, headers: { 'x-scope': 'throws' } }), 400, 'missing-key');
    });
  });

  describe('scopes', () => {
    it.each(['undefined', 'null', 'empty', 'number', 'throws', 'nul', 'lone-surrogate'])(
      'refuses the request with 500 scope-unresolved when the resolver gives no identity (%s)',
      async (which) => {
        const key = randomUUID();
        const before = calls.count('echo');
        expectProblem(
          await post(base, '/echo', { key, body: {}, headers: { 'x-scope': which } }),
          500,
          'scope-unresolved',
        );
        expect(calls.count('echo')).toBe(before);
        expect(await rows(key)).toEqual([]);
      },
    );

    // Stored as UTF-8, "caf\ud800" would become "caf\ufffd": another caller's scope.
    it('never lets a scope with a lone surrogate reach the record of its U+FFFD look-alike', async () => {
      const key = randomUUID();
      const first = await post(base, '/echo', { key, body: {}, headers: { 'x-scope': 'replacement-char' } });
      expect(first.status).toBe(201);
      const imitation = await post(base, '/echo', { key, body: {}, headers: { 'x-scope': 'lone-surrogate' } });
      expectProblem(imitation, 500, 'scope-unresolved');
    });

    // A caller who may pick its own id must not be able to pick another caller's stored hash.
    it('keeps a short scope that looks like a stored hash apart from the long scope it imitates', async () => {
      const key = randomUUID();
      const subject = 'v'.repeat(300);
      const victim = await post(base, '/echo', {
        key,
        body: {},
        headers: { 'x-scope': 'subject', 'x-subject': subject },
      });
      expect(victim.status).toBe(201);
      const [stored] = await rows(key);
      const attacker = await post(base, '/echo', {
        key,
        body: {},
        headers: { 'x-scope': 'subject', 'x-subject': stored.scope },
      });
      expect(attacker.status).toBe(201);
      expect(attacker.headers.get('idempotent-replayed')).toBeNull();
      expect(attacker.text).not.toBe(victim.text);
      expect(await rows(key)).toHaveLength(2);
    });

    it('answers with the HttpException the resolver throws', async () => {
      const key = randomUUID();
      const before = calls.count('echo');
      const response = await post(base, '/echo', { key, body: {}, headers: { 'x-scope': 'unauthorized' } });
      expect(response.status).toBe(401);
      expect(response.json).toMatchObject({ message: 'who are you?' });
      expect(calls.count('echo')).toBe(before);
      expect(await rows(key)).toEqual([]);
    });

    it('stores a 3000-character scope as its SHA-256, replays it, and finds it by the scope', async () => {
      const key = randomUUID();
      const subject = 'x'.repeat(2964) + randomUUID();
      const headers = { 'x-scope': 'subject', 'x-subject': subject };
      const first = await post(base, '/echo', { key, body: {}, headers });
      expect(first.status).toBe(201);
      const retry = await post(base, '/echo', { key, body: {}, headers });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(first.text);
      const [record] = await rows(key);
      expect(record.scope).toMatch(/^sha256:[0-9a-f]{64}$/);
      const found = await parsed.app
        .get(IdempotencyService)
        .find({ scope: subject, method: 'POST', route: '/echo', key });
      expect(found).toMatchObject({ status: 'completed', response: { status: 201, body: first.text } });
    });

    it('refuses a caller without request.user on the default scope (500), and keys a signed-in one by its id', async () => {
      const running = await startApp(defaultScopeModule(db.url), platform);
      try {
        const key = randomUUID();
        const before = calls.count('anonymous');
        expectProblem(await post(running.url, '/anonymous', { key, body: {} }), 500, 'scope-unresolved');
        expect(calls.count('anonymous')).toBe(before);
        expect(await rows(key)).toEqual([]);

        // String({ tenant, name }) is "[object Object]" for every user: refused, not shared.
        const objectId = await post(running.url, '/object-id', { key, body: {}, headers: { 'x-user': 'alice' } });
        expectProblem(objectId, 500, 'scope-unresolved');
        expect(await rows(key)).toEqual([]);

        const signedIn = await post(running.url, '/signed-in', { key, body: {} });
        expect(signedIn.status).toBe(201);
        expect((await post(running.url, '/signed-in', { key, body: {} })).text).toBe(signedIn.text);
        expect((await rows(key)).map((r) => r.scope)).toEqual(['u1']);
      } finally {
        await running.close();
      }
    });
  });

  describe('options and errors', () => {
    it.each([
      ['waitTimeoutMs', 3e9],
      ['leaseMs', 1e10],
      ['purgeIntervalMs', 1e12],
    ])('refuses %s = %d at start-up, naming the option', async (name, value) => {
      let message = 'the application started';
      try {
        const running = await startApp(
          IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, [name]: value }),
          platform,
        );
        await running.close();
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toMatch(new RegExp(`"${name}" must be .*2147483647, got ${value}`));
    });

    it('never runs two timer purges at once: a blocked purge makes the next ticks skip', async () => {
      const running = await startApp(hostileModule(db.url, { purgeIntervalMs: 1000 }), platform);
      // A SHARE lock on the table blocks every DELETE (SKIP LOCKED skips locked rows, not a
      // table lock), so the first timer purge waits, holding its connection, until we let go.
      const blocker = await db.pool.connect();
      const waitingPurges = async () =>
        (
          await db.pool.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%DELETE FROM idempotency_keys%'`,
          )
        ).rows[0].n;
      try {
        await blocker.query('BEGIN');
        await blocker.query('LOCK TABLE idempotency_keys IN SHARE MODE');
        // Ticks at about 1, 2 and 3 s: overlapping purges would be three waiting DELETEs by now.
        await sleep(3300);
        expect(await waitingPurges()).toBe(1);
      } finally {
        await blocker.query('ROLLBACK');
        blocker.release();
        await running.close();
      }
    });

    it("answers with the handler's 4xx and releases the key when the storeErrors policy throws (lease mode)", async () => {
      const key = randomUUID();
      const before = calls.count('policy-throws');
      const first = await post(base, '/policy-throws', { key, body: {} });
      expect(first.status).toBe(404);
      expect(first.json).toMatchObject({ message: 'no such account', run: before + 1 });
      expect(await rows(key)).toEqual([]);
      const retry = await post(base, '/policy-throws', { key, body: {} });
      expect(retry.status).toBe(404);
      expect(retry.json).toMatchObject({ run: before + 2 });
      expect(retry.headers.get('idempotent-replayed')).toBeNull();
    });

    it("answers 410 without any of the original response's headers", async () => {
      const key = randomUUID();
      const first = await post(base, '/large', { key, body: {} });
      expect(first.status).toBe(201);
      expect([first.headers.get('location'), first.headers.get('etag')]).toEqual(['/x/1', '"v1"']);
      const retry = await post(base, '/large', { key, body: {} });
      expectProblem(retry, 410, 'response-not-replayable');
      expect(retry.headers.get('location')).toBeNull();
      // Express computes a weak ETag of its own for every body it sends (here the problem's); the original's is gone.
      expect(retry.headers.get('etag')).not.toBe('"v1"');
      if (platform === 'fastify') expect(retry.headers.get('etag')).toBeNull();
      expect((await rows(key))[0].response.headers).toEqual({});
      // Nor does any other problem of the route carry the headers its @Header() declares.
      const reused = await post(base, '/large', { key, body: { other: true } });
      expectProblem(reused, 422, 'key-reused');
      expect(reused.headers.get('location')).toBeNull();
      expect(calls.count('large')).toBe(first.json.run);
    });

    it('replays a stored 4xx with the allow-listed headers the original carried', async () => {
      const key = randomUUID();
      const first = await post(base, '/declined', { key, body: {} });
      expect(first.status).toBe(402);
      const retry = await post(base, '/declined', { key, body: {} });
      expect(retry.status).toBe(402);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(first.text);
      for (const name of ['content-type', 'location', 'etag']) {
        expect({ name, value: retry.headers.get(name) }).toEqual({ name, value: first.headers.get(name) });
      }
      expect([first.headers.get('location'), first.headers.get('etag')]).toEqual(['/x/2', '"v2"']);
    });
  });
});
