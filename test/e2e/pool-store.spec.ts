import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { type ChildApp, startChildApp } from '../support/child-app.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { POOL_EFFECTS_TABLE } from '../support/pool-app.js';

/**
 * The PostgreSQL store on a plain node-postgres Pool (the module option `pool`), in
 * processes where TypeORM cannot load: lease and transactional routes, the handler's
 * client with its nested transactions, and a crash in the middle of a transactional
 * request.
 */
describe('PostgreSQL store on a pg Pool, without TypeORM', () => {
  let db: TestDatabase;
  const apps: ChildApp[] = [];
  const LEASE_MS = 1500;

  const start = async () => {
    const app = await startChildApp('pool-app-process', `pool-app-${apps.length}`, {
      DATABASE_URL: db.url,
      LEASE_MS: String(LEASE_MS),
    });
    apps.push(app);
    const [, port] = await app.waitForOutput(/listening on port (\d+)/);
    return { app, base: `http://127.0.0.1:${port}` };
  };
  const effects = async (owner: string) =>
    (await db.pool.query('SELECT kind FROM pool_effects WHERE owner = $1 ORDER BY id', [owner])).rows.map(
      (row) => row.kind as string,
    );
  const record = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows[0];
  const owner = () => 'owner-' + randomUUID().slice(0, 8);

  let base: string;
  let other: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(POOL_EFFECTS_TABLE);
    const [first, second] = await Promise.all([start(), start()]);
    base = first.base;
    other = second.base;
    expect(first.app.output()).toContain('typeorm cannot load');
  }, 120_000);

  afterAll(async () => {
    for (const app of apps) await app.stop();
    await db?.drop();
  });

  it('runs a lease-mode route once for parallel duplicates on two processes, and replays', async () => {
    const who = owner();
    const key = randomUUID();
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => post(i % 2 ? other : base, `/pool/orders/${who}`, { key })),
    );
    const created = answers.filter((answer) => answer.status === 201);
    expect(created.length).toBeGreaterThanOrEqual(1);
    expect(answers.every((answer) => answer.status === 201 || answer.status === 409)).toBe(true);
    expect(new Set(created.map((answer) => answer.text)).size).toBe(1);
    expect(await effects(who)).toEqual(['lease']);
    const retry = await post(other, `/pool/orders/${who}`, { key });
    expect(retry.text).toBe(created[0].text);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
  });

  it('commits the writes made through the client with the stored response, once for 20 parallel duplicates', async () => {
    const who = owner();
    const key = randomUUID();
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => post(i % 2 ? other : base, `/pool/tx/${who}`, { key, body: {} })),
    );
    expect(answers.map((answer) => answer.status)).toEqual(Array(20).fill(201));
    expect(new Set(answers.map((answer) => answer.text)).size).toBe(1);
    expect(answers.filter((answer) => answer.headers.get('idempotent-replayed') !== 'true')).toHaveLength(1);
    expect(await effects(who)).toEqual(['tx', 'service']);
    expect(await record(key)).toMatchObject({ status: 'completed', response: { body: answers[0].text } });
  });

  it("discards the client's writes on a stored 4xx, and rolls all back on a 5xx, releasing the key", async () => {
    const who = owner();
    const declined = randomUUID();
    expect((await post(base, `/pool/tx/${who}`, { key: declined, body: { status: 402 } })).status).toBe(402);
    expect(await record(declined)).toMatchObject({ status: 'completed', response: { kind: 'error', status: 402 } });
    const failed = randomUUID();
    expect((await post(base, `/pool/tx/${who}`, { key: failed, body: { status: 503 } })).status).toBe(503);
    expect(await record(failed)).toBeUndefined();
    expect(await effects(who)).toEqual([]);
  });

  it("turns the handler's BEGIN / COMMIT / ROLLBACK into a savepoint inside the request's transaction", async () => {
    const committed = owner();
    expect((await post(base, `/pool/tx/${committed}`, { key: randomUUID(), body: { nested: 'commit' } })).status).toBe(
      201,
    );
    expect(await effects(committed)).toEqual(['tx', 'service', 'nested']);

    const rolledBack = owner();
    const key = randomUUID();
    expect((await post(base, `/pool/tx/${rolledBack}`, { key, body: { nested: 'rollback' } })).status).toBe(201);
    expect(await effects(rolledBack)).toEqual(['tx', 'service']);
    expect(await record(key)).toMatchObject({ status: 'completed' });
  });

  it('commits nothing when the handler leaves its nested transaction open, or sends COMMIT of its own', async () => {
    // A commit refused is answered as any failed commit (503); the handler's refused COMMIT is its own error (500).
    for (const [body, status] of [
      [{ nested: 'open' }, 503],
      [{ bareCommit: true }, 500],
    ] as const) {
      const who = owner();
      const key = randomUUID();
      const answer = await post(base, `/pool/tx/${who}`, { key, body });
      expect(answer.status).toBe(status);
      expect(await effects(who)).toEqual([]);
      expect(await record(key)).toBeUndefined();
      // The connection went back to the pool clean: the next request commits.
      expect((await post(base, `/pool/tx/${who}`, { key: randomUUID(), body: {} })).status).toBe(201);
    }
  });

  it('refuses a COMMIT or ROLLBACK of its own however it is spelled, committing nothing', async () => {
    for (const bareControl of [
      'COMMIT ;',
      'commit;;',
      '/* payments */ COMMIT',
      'COMMIT -- done',
      'COMMIT AND NO CHAIN',
      'COMMIT AND CHAIN',
      'END TRANSACTION ;',
    ]) {
      const who = owner();
      const key = randomUUID();
      const answer = await post(base, `/pool/tx/${who}`, { key, body: { bareControl } });
      expect({ bareControl, status: answer.status }).toEqual({ bareControl, status: 500 });
      expect(await effects(who)).toEqual([]);
      expect(await record(key)).toBeUndefined();
    }
  });

  it('keeps a nested level open when its COMMIT fails, so that the ROLLBACK after it rolls back to it', async () => {
    const who = owner();
    const key = randomUUID();
    const answer = await post(base, `/pool/tx/${who}`, { key, body: { commitFailedNested: true } });
    // The failed statement aborted the nested level: its COMMIT fails, its ROLLBACK undoes it, the request goes on.
    expect(answer.status).toBe(201);
    expect(answer.json.commitError).toBe('25P02');
    expect(await effects(who)).toEqual(['tx', 'service']);
    expect(await record(key)).toMatchObject({ status: 'completed' });
  });

  it('commits none of the writes the handler left running once it threw an error that is stored', async () => {
    const who = owner();
    const key = randomUUID();
    const answer = await post(base, `/pool/tx/${who}`, { key, body: { status: 402, writesAfterThrow: true } });
    expect(answer.status).toBe(402);
    expect(await record(key)).toMatchObject({ status: 'completed', response: { kind: 'error', status: 402 } });
    expect(await effects(who)).toEqual([]);
  });

  it('refuses queries on a client kept after its request ended', async () => {
    expect((await post(base, `/pool/tx/${owner()}`, { key: randomUUID(), body: { keepClient: true } })).status).toBe(
      201,
    );
    const leaked = await post(base, '/pool/leaked');
    expect(leaked.json).toEqual({ refused: true, message: expect.stringMatching(/has ended/) });
    // A Submittable (a cursor, a pg.Query) is refused on the object itself, and the process lives on.
    const submitted = await post(base, '/pool/leaked-submittable');
    expect(submitted.json).toEqual({ refused: true, message: expect.stringMatching(/has ended/) });
    expect((await post(base, `/pool/tx/${owner()}`, { key: randomUUID(), body: {} })).status).toBe(201);
  });

  it('hands a transactional run() the client, and an EntityManager argument that says there is none', async () => {
    const who = owner();
    const key = randomUUID();
    const first = await post(base, `/pool/run/${who}/${key}`);
    expect(first.status).toBe(201);
    expect(first.json.managerError).toMatch(/pg Pool.*IdempotentClient/);
    expect((await post(other, `/pool/run/${who}/${key}`)).text).toBe(first.text);
    expect(await effects(who)).toEqual(['run']);
  });

  it('keeps exactly one effect when the process is killed mid-request and the request is retried', async () => {
    const victim = await start();
    const who = owner();
    const key = randomUUID();
    const pending = post(victim.base, `/pool/tx/${who}`, { key, body: { holdMs: 60_000 } }).catch((error) => error);
    await victim.app.waitForOutput(new RegExp(`holding ${who}`));
    // Written, uncommitted: invisible outside the transaction.
    expect(await effects(who)).toEqual([]);
    await victim.app.stop('SIGKILL');
    await pending;
    // The database rolled the transaction back with the connection: the key is free at once.
    const retry = await post(base, `/pool/tx/${who}`, { key, body: {} });
    expect(retry.status).toBe(201);
    expect(await effects(who)).toEqual(['tx', 'service']);
    expect((await post(other, `/pool/tx/${who}`, { key, body: {} })).text).toBe(retry.text);
    expect(await effects(who)).toEqual(['tx', 'service']);
  }, 60_000);
});
