import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Cluster, waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';

/**
 * Transactional mode (the sample app's POST /payments) under crashes and load, with real
 * processes and a real PostgreSQL: the payment row and the stored response commit
 * together or not at all.
 */
describe('chaos: transactional mode', () => {
  let db: TestDatabase;
  const cluster = new Cluster(() => db);
  const body = { amount: 2500, currency: 'EUR' };
  const user = () => 'tx-' + randomUUID().slice(0, 8);

  /** The backend whose open transaction has written a payment row (not yet committed). */
  const paymentWriter = async (): Promise<number | undefined> => {
    const { rows } = await db.pool.query(
      `SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
       WHERE c.relname = 'payments' AND l.mode = 'RowExclusiveLock' AND l.database =
         (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    return rows[0]?.pid;
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(() => cluster.stopAll());
  afterAll(async () => {
    await db?.drop();
  });

  it('kill -9 mid-request leaves neither payment nor record; the retry on another instance runs at once', async () => {
    const [victim, survivor] = await Promise.all([cluster.start({ PROVIDER_LATENCY_MS: '5000' }), cluster.start()]);
    const caller = user();
    const key = randomUUID();
    const doomed = post(victim.url, '/payments', { key, user: caller, body }).catch(() => 'connection lost');
    await waitFor(async () => (await paymentWriter()) !== undefined, 'the payment row to be written');
    victim.child.kill('SIGKILL');
    expect(await doomed).toBe('connection lost');

    // No lease to wait for: the database rolled the dead request back.
    const started = Date.now();
    const retry = await post(survivor.url, '/payments', { key, user: caller, body });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(Date.now() - started).toBeLessThan(30_000); // the default lease; a lease wait would show here
    expect(await cluster.count('payments', caller)).toBe(1);
    expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: retry.text } });
    const replay = await post(survivor.url, '/payments', { key, user: caller, body });
    expect(replay.text).toBe(retry.text);
  });

  it('a connection lost mid-request answers 5xx, leaves nothing claimed, and the retry succeeds', async () => {
    const app = await cluster.start({ PROVIDER_LATENCY_MS: '1500' });
    const caller = user();
    const key = randomUUID();
    const pending = post(app.url, '/payments', { key, user: caller, body });
    let pid: number | undefined;
    await waitFor(async () => (pid = await paymentWriter()) !== undefined, 'the payment row to be written');
    await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);

    const failed = await pending;
    expect(failed.status).toBe(503);
    expect(failed.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(failed.json.type).toBe('urn:nestjs-idempotency:problem:store-unavailable');
    expect(await cluster.record(key)).toBeUndefined();
    expect(await cluster.count('payments', caller)).toBe(0);

    const retry = await post(app.url, '/payments', { key, user: caller, body });
    expect(retry.status).toBe(201);
    expect(await cluster.count('payments', caller)).toBe(1);
  });

  it('200 parallel duplicates on one instance (pool of 10) all get the one payment, within the wait time-out', async () => {
    const app = await cluster.start({ PROVIDER_LATENCY_MS: '500', IDEMPOTENCY_WAIT_TIMEOUT_MS: '8000' });
    const caller = user();
    const key = randomUUID();
    const responses = await Promise.all(
      Array.from({ length: 200 }, () => post(app.url, '/payments', { key, user: caller, body })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(200).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(await cluster.count('payments', caller)).toBe(1);
  });

  it('a burst of 210 duplicates over 3 instances runs once: one answer for all (wait), or 409 (reject)', async () => {
    const instances = await cluster.startMany(3, { PROVIDER_LATENCY_MS: '400' });
    const burst = (path: string, key: string, caller: string, payload: unknown) =>
      Promise.all(
        Array.from({ length: 210 }, (_, i) => post(instances[i % 3].url, path, { key, user: caller, body: payload })),
      );

    const payer = user();
    const payments = await burst('/payments', randomUUID(), payer, body);
    expect(payments.map((r) => r.status)).toEqual(Array(210).fill(201));
    expect(new Set(payments.map((r) => r.text)).size).toBe(1);
    expect(await cluster.count('payments', payer)).toBe(1);

    const mailer = user();
    const emails = await burst('/emails', randomUUID(), mailer, { to: 'a@example.com', subject: 'x' });
    const executed = emails.filter((r) => r.status === 202 && r.headers.get('idempotent-replayed') === null);
    expect(executed).toHaveLength(1);
    for (const response of emails) {
      if (response.status === 202) expect(response.text).toBe(executed[0].text);
      else expect(response.status).toBe(409);
    }
    expect(await cluster.count('emails', mailer)).toBe(1);
  });
});
