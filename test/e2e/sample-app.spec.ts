import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { type HttpResult, post, send } from '../support/http.js';
import { waitFor } from '../support/cluster.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

const LATENCY_MS = 150;

function expectProblem(response: HttpResult, status: number): void {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(response.json).toMatchObject({ status, title: expect.any(String), type: expect.any(String) });
}

/** The sample app's HTTP contract, on a real process started on an empty database. */
describe('sample app contract', () => {
  let db: TestDatabase;
  let app: SampleProcess;
  let base: string;

  const count = async (table: 'payments' | 'emails', user: string) =>
    (await db.pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE user_id = $1`, [user])).rows[0].n as number;
  const records = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows;
  const user = () => 'user-' + randomUUID().slice(0, 8);

  beforeAll(async () => {
    db = await createTestDatabase({ migrate: false });
    app = await startSampleApp({ DATABASE_URL: db.url, PROVIDER_LATENCY_MS: String(LATENCY_MS) });
    base = app.url;
  });

  afterAll(async () => {
    await app?.kill();
    await db?.drop();
  });

  it('applies its migrations at start-up and reports health', async () => {
    const tables = await db.pool.query(
      "SELECT table_name FROM information_schema.tables WHERE table_name IN ('idempotency_keys', 'payments', 'emails') ORDER BY 1",
    );
    expect(tables.rows.map((row) => row.table_name)).toEqual(['emails', 'idempotency_keys', 'payments']);
    const health = await send(base, 'GET', '/health');
    expect(health.status).toBe(200);
  });

  it('creates one payment and replays it to every retry', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { amount: 1999, currency: 'EUR', card: '4242424242424242' };
    const first = await post(base, '/payments', { key, user: caller, body });
    expect(first.status).toBe(201);
    expect(first.json).toEqual({
      id: expect.any(String),
      amount: 1999,
      currency: 'EUR',
      status: 'succeeded',
      createdAt: expect.any(String),
    });
    expect(Object.keys(first.json)).toEqual(['id', 'amount', 'currency', 'status', 'createdAt']);
    const retry = await post(base, '/payments', { key: `"${key}"`, user: caller, body });
    expect(retry.status).toBe(201);
    expect(retry.text).toBe(first.text);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await count('payments', caller)).toBe(1);
    const row = (await db.pool.query('SELECT * FROM payments WHERE id = $1', [first.json.id])).rows[0];
    expect(row).toMatchObject({ user_id: caller, amount: '1999', currency: 'EUR', status: 'succeeded' });
  });

  it('refuses invalid bodies with 400 and stores nothing, so the fixed request can reuse the key', async () => {
    const caller = user();
    const key = randomUUID();
    for (const body of [
      { amount: -5, currency: 'EUR' },
      { amount: 1.5, currency: 'EUR' },
      { amount: 10, currency: 'eur' },
      [1],
    ]) {
      expectProblem(await post(base, '/payments', { key, user: caller, body }), 400);
    }
    expectProblem(await post(base, '/payments', { key, user: caller, body: '{"amount":' }), 400);
    expect(await records(key)).toHaveLength(0);
    expect(await count('payments', caller)).toBe(0);
    const fixed = await post(base, '/payments', { key, user: caller, body: { amount: 10, currency: 'EUR' } });
    expect(fixed.status).toBe(201);
    expect(await count('payments', caller)).toBe(1);
  });

  it('answers 401 without X-User-Id and 400 without a key, both as problems', async () => {
    expectProblem(await post(base, '/payments', { key: randomUUID(), body: { amount: 1, currency: 'EUR' } }), 401);
    const missingKey = await post(base, '/payments', { user: user(), body: { amount: 1, currency: 'EUR' } });
    expectProblem(missingKey, 400);
    expect(missingKey.json.type).toMatch(/missing-key$/);
  });

  it('answers 422 when a key is reused for another payment', async () => {
    const caller = user();
    const key = randomUUID();
    await post(base, '/payments', { key, user: caller, body: { amount: 100, currency: 'EUR' } });
    expectProblem(await post(base, '/payments', { key, user: caller, body: { amount: 200, currency: 'EUR' } }), 422);
    expect(await count('payments', caller)).toBe(1);
  });

  it('stores and replays a declined card (402)', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { amount: 500, currency: 'USD', card: '4000000000000002' };
    const first = await post(base, '/payments', { key, user: caller, body });
    expectProblem(first, 402);
    const retry = await post(base, '/payments', { key, user: caller, body });
    expect(retry.status).toBe(402);
    expect(retry.text).toBe(first.text);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.headers.get('content-type')).toBe(first.headers.get('content-type'));
    expect(await count('payments', caller)).toBe(0);
    expect((await records(key))[0]).toMatchObject({ status: 'completed', response: { status: 402, kind: 'error' } });
  });

  it('releases the key after a provider error (503), so a retry runs again', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { amount: 500, currency: 'USD', card: '4000000000000119' };
    expectProblem(await post(base, '/payments', { key, user: caller, body }), 503);
    expect(await records(key)).toHaveLength(0);
    const retry = await post(base, '/payments', { key, user: caller, body });
    expectProblem(retry, 503);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
  });

  it("keeps each user's keys apart", async () => {
    const key = randomUUID();
    const body = { amount: 700, currency: 'GBP' };
    const [alice, bob] = [user(), user()];
    const first = await post(base, '/payments', { key, user: alice, body });
    const other = await post(base, '/payments', { key, user: bob, body });
    expect(other.status).toBe(201);
    expect(other.json.id).not.toBe(first.json.id);
    expect(other.headers.get('idempotent-replayed')).toBeNull();
    expect([await count('payments', alice), await count('payments', bob)]).toEqual([1, 1]);
  });

  it('charges once for 50 parallel duplicates, all answered with the same payment', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { amount: 4200, currency: 'EUR' };
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => post(base, '/payments', { key, user: caller, body })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(50).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(await count('payments', caller)).toBe(1);
  });

  it('queues an e-mail once (202), rejects a parallel duplicate with 409, then replays', async () => {
    const caller = user();
    const key = randomUUID();
    const body = { to: 'someone@example.com', subject: 'Your receipt' };
    const first = post(base, '/emails', { key, user: caller, body });
    // Sent once the first request holds the key: a fixed pause let a loaded machine deliver
    // the duplicate first, which then ran and left the 409 to the original.
    await waitFor(async () => (await records(key)).length > 0, 'the first request to claim its key');
    const duplicate = await post(base, '/emails', { key, user: caller, body });
    expectProblem(duplicate, 409);
    expect(duplicate.headers.get('retry-after')).toBe('1');
    const original = await first;
    expect(original.status).toBe(202);
    expect(original.json).toEqual({ id: expect.any(String), status: 'queued' });
    const retry = await post(base, '/emails', { key, user: caller, body });
    expect(retry.status).toBe(202);
    expect(retry.text).toBe(original.text);
    expect(await count('emails', caller)).toBe(1);
    expectProblem(
      await post(base, '/emails', { key: randomUUID(), user: caller, body: { to: 'not-an-address', subject: 'x' } }),
      400,
    );
  });

  it('issues a key for a payment that every device of the caller can retry with', async () => {
    const caller = user();
    const intent = await post(base, '/payment-intents', { user: caller });
    expect(intent.status).toBe(201);
    expect(intent.json).toEqual({ idempotencyKey: expect.any(String), expiresAt: expect.any(String) });
    expect(Date.parse(intent.json.expiresAt)).toBeGreaterThan(Date.now());
    const body = { amount: 999, currency: 'EUR' };
    const first = await post(base, '/payments', { key: intent.json.idempotencyKey, user: caller, body });
    const otherDevice = await post(base, '/payments', { key: intent.json.idempotencyKey, user: caller, body });
    expect(first.status).toBe(201);
    expect(otherDevice.text).toBe(first.text);
    expect(await count('payments', caller)).toBe(1);
    expectProblem(await post(base, '/payment-intents', {}), 401);
  });
});
