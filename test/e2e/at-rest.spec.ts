import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { canonicalJson, type IdempotencyModuleOptions } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { calls, hostileModule } from '../support/hostile-app.js';
import { expectProblem } from '../support/problems.js';
import { PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

/** What the idempotency_keys table reveals of requests and responses: fingerprints are keyed MACs, responses may be sealed. */

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const secret = () => randomBytes(32).toString('base64');

describe.each(PLATFORMS)('data at rest (%s)', (platform) => {
  let db: TestDatabase;
  const apps: RunningApp[] = [];
  const start = async (options: IdempotencyModuleOptions = {}) => {
    const running = await startApp(hostileModule(db.url, options), platform);
    apps.push(running);
    return running.url;
  };

  const record = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows[0];

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await Promise.all(apps.map((running) => running.close()));
    await db?.drop();
  });

  describe('fingerprints', () => {
    const [oldSecret, newSecret] = [secret(), secret()];
    let first: string;
    let second: string;
    let old: string;
    let rotated: string;
    let renewed: string;

    beforeAll(async () => {
      // Two instances on the default secret, which the first creates in idempotency_settings.
      [first, second] = [await start(), await start()];
      old = await start({ fingerprintSecret: oldSecret });
      rotated = await start({ fingerprintSecret: [newSecret, oldSecret] });
      renewed = await start({ fingerprintSecret: [newSecret] });
    });

    it('stores a keyed MAC of the payload, not a hash anyone can recompute from a guess', async () => {
      const key = randomUUID();
      const body = { card: '4242424242424242', email: 'a@b.example' };
      // /echo does not send the body back, so the response column holds none of it either.
      expect((await post(first, '/echo', { key, body })).status).toBe(201);
      const { fingerprint } = await record(key);
      expect(fingerprint).toMatch(/^[0-9a-f]{8}:[0-9a-f]{64}$/);
      const canonical = canonicalJson(body);
      const guesses = [
        canonical,
        'j:' + canonical,
        'j:' + canonical + '\0q:{}',
        JSON.stringify(body),
        JSON.stringify({ body }),
      ].map(sha256);
      expect(guesses).not.toContain(fingerprint.split(':')[1]);
      expect(guesses).not.toContain(fingerprint);
      const row = JSON.stringify(await record(key));
      for (const text of ['4242', 'a@b.example']) expect(row).not.toContain(text);

      const { rows } = await db.pool.query('SELECT name FROM idempotency_settings');
      expect(rows).toEqual([{ name: 'fingerprint_secret' }]);
    });

    it('shares the secret between instances: a key used on one replays on the other', async () => {
      const key = randomUUID();
      const before = calls.count('reflect');
      const one = await post(first, '/reflect', { key, body: { amount: 10 } });
      const other = await post(second, '/reflect', { key, body: { amount: 10 } });
      expect(other.status).toBe(201);
      expect(other.headers.get('idempotent-replayed')).toBe('true');
      expect(other.text).toBe(one.text);
      expect(calls.count('reflect')).toBe(before + 1);
      expectProblem(await post(second, '/reflect', { key, body: { amount: 11 } }), 422, 'key-reused');
    });

    it('recognises records of a retired secret while it is listed after the new one', async () => {
      const key = randomUUID();
      const before = calls.count('reflect');
      const original = await post(old, '/reflect', { key, body: { amount: 20 } });
      const oldId = (await record(key)).fingerprint.split(':')[0];

      const retry = await post(rotated, '/reflect', { key, body: { amount: 20 } });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(original.text);
      expectProblem(await post(rotated, '/reflect', { key, body: { amount: 21 } }), 422, 'key-reused');

      // New records are MACed under the new secret, whose id differs.
      const fresh = randomUUID();
      expect((await post(rotated, '/reflect', { key: fresh, body: { amount: 20 } })).status).toBe(201);
      const newId = (await record(fresh)).fingerprint.split(':')[0];
      expect(newId).not.toBe(oldId);
      expect((await post(renewed, '/reflect', { key: fresh, body: { amount: 20 } })).text).toContain('"amount":20');

      // Without the old secret, the old record's MAC cannot be recomputed, so the same
      // request cannot be told from a different one: 422, never a second execution.
      expectProblem(await post(renewed, '/reflect', { key, body: { amount: 20 } }), 422, 'key-reused');
      expect(calls.count('reflect')).toBe(before + 2);
    });
  });

  describe('encrypted responses', () => {
    const k1 = { id: 'k1', key: randomBytes(32) };
    const k2 = { id: 'k2', key: randomBytes(32) };
    let sealedK1: string;
    let both: string;
    let onlyK2: string;

    beforeAll(async () => {
      sealedK1 = await start({ encryptionKeys: [k1] });
      both = await start({ encryptionKeys: [k2, k1] });
      onlyK2 = await start({ encryptionKeys: [k2] });
    });

    const confidential = async (url: string) => {
      const key = randomUUID();
      const note = `confidential-${randomUUID()}`;
      const response = await post(url, '/reflect', { key, body: { note } });
      expect(response.status).toBe(201);
      return { key, note, response };
    };

    it('seals the response column and replays the response byte for byte', async () => {
      const { key, note, response } = await confidential(sealedK1);
      const { response: stored } = await record(key);
      expect(stored).toEqual({
        sealed: 'A256GCM',
        kid: 'k1',
        iv: expect.any(String),
        tag: expect.any(String),
        data: expect.any(String),
      });
      for (const text of [note, 'confidential', 'reflect', '"run"']) expect(JSON.stringify(stored)).not.toContain(text);
      const retry = await post(sealedK1, '/reflect', { key, body: { note } });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(response.text);
      expect(retry.headers.get('content-type')).toBe(response.headers.get('content-type'));
    });

    it('rotates: old records still replay, new ones are sealed with the new key', async () => {
      const old = await confidential(sealedK1);
      const retry = await post(both, '/reflect', { key: old.key, body: { note: old.note } });
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(old.response.text);
      const fresh = await confidential(both);
      expect((await record(fresh.key)).response.kid).toBe('k2');
    });

    it('answers 503 for a record sealed under a key it does not have, and runs nothing', async () => {
      const old = await confidential(sealedK1);
      const before = calls.count('reflect');
      expectProblem(
        await post(onlyK2, '/reflect', { key: old.key, body: { note: old.note } }),
        503,
        'store-unavailable',
      );
      expect(calls.count('reflect')).toBe(before);
    });

    it('refuses to replay a sealed response copied into another record', async () => {
      const victim = await confidential(sealedK1);
      const copied = await confidential(sealedK1);
      // A completed record is immutable (trigger); an operator with the rights can bypass it.
      const client = await db.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SET LOCAL session_replication_role = replica');
        await client.query(
          `UPDATE idempotency_keys SET response = (SELECT response FROM idempotency_keys WHERE idempotency_key = $1)
            WHERE idempotency_key = $2`,
          [victim.key, copied.key],
        );
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      const before = calls.count('reflect');
      const retry = await post(sealedK1, '/reflect', { key: copied.key, body: { note: copied.note } });
      expectProblem(retry, 503, 'store-unavailable');
      expect(retry.text).not.toContain(victim.note);
      expect(calls.count('reflect')).toBe(before);
      expect((await post(sealedK1, '/reflect', { key: victim.key, body: { note: victim.note } })).text).toBe(
        victim.response.text,
      );
    });
  });
});
