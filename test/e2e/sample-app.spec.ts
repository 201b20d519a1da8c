import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
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

/**
 * The sample app's HTTP contract, on a real process started on an empty database: once on
 * the default store (the library on TypeORM's DataSource), once with IDEMPOTENCY_STORE=pool
 * (the library on a pg Pool of its own, POST /payments writing through the transaction's
 * client). Same routes, bodies, status codes and rows.
 */
describe.each(['postgres', 'pool'])('sample app contract (IDEMPOTENCY_STORE=%s)', (store) => {
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
    app = await startSampleApp({
      DATABASE_URL: db.url,
      PROVIDER_LATENCY_MS: String(LATENCY_MS),
      IDEMPOTENCY_STORE: store,
    });
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

/**
 * What IDEMPOTENCY_STORE=pool adds to the contract above: the payment row, written through
 * the transaction's client, and the idempotency record commit together (a crash leaves
 * neither, and a retry on a fresh process charges once); the broker features are refused;
 * SIGTERM closes the app and ends the pool.
 */
describe('sample app on a pg Pool (IDEMPOTENCY_STORE=pool)', () => {
  let db: TestDatabase;
  const apps: SampleProcess[] = [];
  const body = { amount: 2500, currency: 'EUR' };
  const start = async (env: Record<string, string> = {}) => {
    const app = await startSampleApp({ DATABASE_URL: db.url, IDEMPOTENCY_STORE: 'pool', ...env });
    apps.push(app);
    return app;
  };
  const count = async (user: string) =>
    (await db.pool.query('SELECT count(*)::int AS n FROM payments WHERE user_id = $1', [user])).rows[0].n as number;
  const records = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows;
  /** The backends whose open transaction has written to `table` (rows not yet committed). */
  const writers = async (table: string): Promise<number[]> => {
    const { rows } = await db.pool.query(
      `SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
       WHERE c.relname = $1 AND l.mode = 'RowExclusiveLock' AND l.database =
         (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [table],
    );
    return rows.map((row) => row.pid as number);
  };
  const user = () => 'pool-' + randomUUID().slice(0, 8);

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    for (const app of apps.splice(0)) await app.kill('SIGKILL');
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('kill -9 mid-payment leaves neither the payment nor its record; the retry on a fresh process charges once', async () => {
    const victim = await start({ PROVIDER_LATENCY_MS: '20000' });
    const caller = user();
    const key = randomUUID();
    const doomed = post(victim.url, '/payments', { key, user: caller, body }).catch(() => 'connection lost');
    await waitFor(async () => (await writers('payments')).length > 0, 'the payment row to be written');
    // One backend, one transaction: the row written through the handler's client and the
    // claimed record are uncommitted in the same transaction.
    const [writer] = await writers('payments');
    expect(await writers('idempotency_keys')).toEqual([writer]);
    expect(await count(caller)).toBe(0);
    victim.child.kill('SIGKILL');
    expect(await doomed).toBe('connection lost');

    // The database rolls the dead backend's transaction back once it notices the closed socket.
    await waitFor(async () => (await writers('payments')).length === 0, 'the dead transaction to be rolled back');
    expect(await count(caller)).toBe(0);
    expect(await records(key)).toHaveLength(0);

    const fresh = await start();
    const retry = await post(fresh.url, '/payments', { key, user: caller, body });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(await count(caller)).toBe(1);
    expect(await records(key)).toMatchObject([{ status: 'completed', response: { body: retry.text } }]);
    const row = (await db.pool.query('SELECT * FROM payments WHERE id = $1', [retry.json.id])).rows[0];
    expect(row).toMatchObject({
      user_id: caller,
      amount: '2500',
      currency: 'EUR',
      card_last4: null,
      status: 'succeeded',
    });
    expect(new Date(row.created_at as Date).toISOString()).toBe(retry.json.createdAt);
    const replay = await post(fresh.url, '/payments', { key, user: caller, body });
    expect(replay.text).toBe(retry.text);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(await count(caller)).toBe(1);
  });

  it('refuses to start with the broker features, whose handlers write through the EntityManager', async () => {
    const brokers: Array<Record<string, string>> = [
      { RABBITMQ_URL: 'amqp://127.0.0.1:1' },
      { REDIS_URL: 'redis://127.0.0.1:1' },
    ];
    for (const env of brokers) {
      await expect(start(env)).rejects.toThrow(/IDEMPOTENCY_STORE=pool runs without the broker features/);
    }
  });

  it('closes the app and ends its pool on SIGTERM (exit status 0)', async () => {
    const app = await start();
    const caller = user();
    expect((await post(app.url, '/payments', { key: randomUUID(), user: caller, body })).status).toBe(201);
    await app.kill('SIGTERM');
    expect({ code: app.child.exitCode, signal: app.child.signalCode }).toEqual({ code: 0, signal: null });
  });
});
