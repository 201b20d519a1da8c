import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PROBLEM_TYPE_BASE } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { Calls, probeModule } from '../support/probe-app.js';
import { PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

describe.each(PLATFORMS)('transactional mode over HTTP (%s)', (platform) => {
  let db: TestDatabase;
  let running: RunningApp;
  let base: string;
  const calls = new Calls();

  const payments = async (owner: string) =>
    (await db.pool.query('SELECT id FROM payments WHERE user_id = $1', [owner])).rows.map((row) => row.id as string);
  const record = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows[0];
  const owner = () => 'owner-' + randomUUID().slice(0, 8);

  beforeAll(async () => {
    db = await createTestDatabase();
    running = await startApp(probeModule(db.url, calls), platform);
    base = running.url;
  });

  afterAll(async () => {
    await running?.close();
    await db?.drop();
  });

  it("commits the handler's writes and the stored response together, and replays", async () => {
    const who = owner();
    const key = randomUUID();
    const first = await post(base, `/tx/${who}`, { key, body: {} });
    expect(first.status).toBe(201);
    expect(await payments(who)).toEqual([first.json.id]);
    expect(await record(key)).toMatchObject({ status: 'completed', owner_token: null, response: { body: first.text } });
    const retry = await post(base, `/tx/${who}`, { key, body: {} });
    expect(retry.text).toBe(first.text);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await payments(who)).toHaveLength(1);
  });

  it("discards the handler's writes on a stored 4xx, and stores and replays the error", async () => {
    const who = owner();
    const key = randomUUID();
    const first = await post(base, `/tx/${who}`, { key, body: { status: 402 } });
    expect(first.status).toBe(402);
    expect(await payments(who)).toEqual([]);
    expect(await record(key)).toMatchObject({ status: 'completed', response: { kind: 'error', status: 402 } });
    const retry = await post(base, `/tx/${who}`, { key, body: { status: 402 } });
    expect(retry.status).toBe(402);
    expect(retry.text).toBe(first.text);
    expect(await payments(who)).toEqual([]);
  });

  it('rolls everything back on an unstored error: no row, no record, and the retry runs again', async () => {
    const who = owner();
    const key = randomUUID();
    const before = calls.count('tx');
    expect((await post(base, `/tx/${who}`, { key, body: { status: 503 } })).status).toBe(503);
    expect(await payments(who)).toEqual([]);
    expect(await record(key)).toBeUndefined();
    expect((await post(base, `/tx/${who}`, { key, body: { status: 503 } })).status).toBe(503);
    expect(calls.count('tx')).toBe(before + 2);
  });

  it("commits the client's writes with the EntityManager's, in one transaction, on a DataSource too", async () => {
    const amounts = async (who: string) =>
      (await db.pool.query('SELECT amount FROM payments WHERE user_id = $1 ORDER BY amount', [who])).rows.map((row) =>
        Number(row.amount),
      );
    const who = owner();
    expect((await post(base, `/tx-client/${who}`, { key: randomUUID(), body: {} })).status).toBe(201);
    expect(await amounts(who)).toEqual([1, 2]);
    const refused = owner();
    const key = randomUUID();
    expect((await post(base, `/tx-client/${refused}`, { key, body: { status: 402 } })).status).toBe(402);
    expect(await amounts(refused)).toEqual([]);
    expect(await record(key)).toMatchObject({ status: 'completed', response: { kind: 'error', status: 402 } });
  });

  it('leaves nothing when a pipe rejects the request', async () => {
    const key = randomUUID();
    expect((await post(base, `/tx-validated/${owner()}`, { key, body: { valid: false } })).status).toBe(400);
    expect(await record(key)).toBeUndefined();
    expect(calls.count('tx-validated')).toBe(0);
  });

  it("answers a duplicate 409 at once while the first holds the key ('reject')", async () => {
    const who = owner();
    const key = randomUUID();
    const first = post(base, `/tx/${who}`, { key, body: { delayMs: 600 } });
    await sleep(150);
    const duplicate = await post(base, `/tx/${who}`, { key, body: { delayMs: 600 } });
    expect(duplicate.status).toBe(409);
    expect(duplicate.json.type).toBe(PROBLEM_TYPE_BASE + 'request-in-progress');
    expect(duplicate.headers.get('retry-after')).toBe('1');
    expect((await first).status).toBe(201);
    expect(await payments(who)).toHaveLength(1);
  });

  it("runs 50 parallel duplicates once; each waits on the database and gets the same answer ('wait')", async () => {
    const who = owner();
    const key = randomUUID();
    const before = calls.count('tx-wait');
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => post(base, `/tx-wait/${who}`, { key, body: { delayMs: 300 } })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(50).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(calls.count('tx-wait')).toBe(before + 1);
    expect(await payments(who)).toHaveLength(1);
  });

  it('lets the next waiter run when the first rolls back, one at a time', async () => {
    const who = owner();
    const key = randomUUID();
    const before = calls.count('tx-wait');
    calls.maxConcurrent = 0;
    const responses = await Promise.all(
      Array.from({ length: 4 }, () => post(base, `/tx-wait/${who}`, { key, body: { delayMs: 100, status: 500 } })),
    );
    expect(responses.map((r) => r.status)).toEqual([500, 500, 500, 500]);
    expect(calls.count('tx-wait')).toBe(before + 4);
    expect(calls.maxConcurrent).toBe(1);
    expect(await payments(who)).toEqual([]);
  });

  it("refuses to commit while the handler's own nested transaction is still open", async () => {
    const who = owner();
    const key = randomUUID();
    const response = await post(base, `/tx-dangling/${who}`, { key });
    expect(response.status).toBe(503);
    await sleep(400);
    expect(await payments(who)).toEqual([]);
    expect(await record(key)).toBeUndefined();
    // The connection went back to the pool clean: the app keeps working.
    expect((await post(base, `/tx/${who}`, { key: randomUUID(), body: {} })).status).toBe(201);
  });

  // A bug in the policy must not replace the handler's answer (404) with a 500, nor leave the key claimed.
  it("answers with the handler's error and releases the key when the error storage policy itself throws", async () => {
    const key = randomUUID();
    const first = await post(base, '/policy-throws', { key });
    expect(first.status).toBe(404);
    expect(first.json).toMatchObject({ message: 'not found' });
    expect(await record(key)).toBeUndefined();
    expect((await post(base, '/policy-throws', { key })).status).toBe(404);
    expect(calls.count('policy-throws')).toBe(2);
  });

  // The handler's own statement sees the broken connection before its 'error' event does.
  it("answers 503 when the connection breaks under the handler's own query, and the retry runs once", async () => {
    const who = owner();
    const key = randomUUID();
    const pending = post(base, `/tx-query/${who}`, { key });
    let pid: number | undefined;
    const deadline = Date.now() + 10_000;
    while (pid === undefined && Date.now() < deadline) {
      const { rows } = await db.pool.query(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()",
      );
      pid = rows[0]?.pid;
      if (pid === undefined) await sleep(20);
    }
    expect(pid).toBeDefined();
    await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
    const failed = await pending;
    expect(failed.status).toBe(503);
    expect(failed.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(failed.json.type).toBe(`${PROBLEM_TYPE_BASE}store-unavailable`);
    expect(await record(key)).toBeUndefined();
    expect(await payments(who)).toEqual([]);
    const retry = await post(base, `/tx-query/${who}`, { key });
    expect(retry.status).toBe(201);
    expect(await payments(who)).toHaveLength(1);
  });

  it('refuses the EntityManager to a route that is not transactional', async () => {
    const response = await post(base, '/manager-outside', { key: randomUUID() });
    expect(response.status).toBe(500);
  });
});
