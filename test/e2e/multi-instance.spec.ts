import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

/**
 * Real processes of the sample app sharing one database: duplicates split across
 * instances, an instance killed mid-request, and a stalled owner that comes back.
 */
describe('several app instances on one database', () => {
  let db: TestDatabase;
  const started: SampleProcess[] = [];

  const start = async (env: Record<string, string>) => {
    const instance = await startSampleApp({ DATABASE_URL: db.url, ...env });
    started.push(instance);
    return instance;
  };
  const count = async (table: 'payments' | 'emails', user: string) =>
    (await db.pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE user_id = $1`, [user])).rows[0].n as number;
  const record = async (key: string) =>
    (await db.pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows[0];
  const waitFor = async (check: () => Promise<boolean>, what: string, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(20);
    }
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterEach(async () => {
    for (const instance of started.splice(0)) {
      instance.child.kill('SIGCONT');
      await instance.kill();
    }
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('runs a payment once for 60 duplicates split across two instances, all answered alike', async () => {
    const [a, b] = await Promise.all([start({ PROVIDER_LATENCY_MS: '300' }), start({ PROVIDER_LATENCY_MS: '300' })]);
    const user = 'split-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { amount: 1234, currency: 'EUR' };
    const responses = await Promise.all(
      Array.from({ length: 60 }, (_, i) => post(i % 2 ? a.url : b.url, '/payments', { key, user, body })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(60).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(responses.filter((r) => r.headers.get('idempotent-replayed') === null)).toHaveLength(1);
    expect(await count('payments', user)).toBe(1);
  });

  it("queues an e-mail once across instances; parallel duplicates get 409 ('reject')", async () => {
    const [a, b] = await Promise.all([start({ PROVIDER_LATENCY_MS: '300' }), start({ PROVIDER_LATENCY_MS: '300' })]);
    const user = 'reject-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { to: 'x@example.com', subject: 'hello' };
    const responses = await Promise.all(
      Array.from({ length: 40 }, (_, i) => post(i % 2 ? a.url : b.url, '/emails', { key, user, body })),
    );
    const executed = responses.filter((r) => r.status === 202 && r.headers.get('idempotent-replayed') === null);
    expect(executed).toHaveLength(1);
    for (const response of responses) {
      if (response.status === 202) expect(response.text).toBe(executed[0].text);
      else expect(response.status).toBe(409);
    }
    expect(await count('emails', user)).toBe(1);
  });

  it('frees the key of an instance killed mid-request once its lease lapses (lease mode)', async () => {
    const env = { PROVIDER_LATENCY_MS: '3000', IDEMPOTENCY_LEASE_MS: '1000' };
    // The survivor waits only briefly for a busy key, so that a busy key shows as 409.
    const [victim, survivor] = await Promise.all([
      start(env),
      start({ ...env, PROVIDER_LATENCY_MS: '0', IDEMPOTENCY_WAIT_TIMEOUT_MS: '100' }),
    ]);
    const user = 'crash-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { amount: 50, currency: 'EUR' };
    const doomed = post(victim.url, '/payments', { key, user, body }).catch(() => 'connection lost');
    await waitFor(async () => (await count('payments', user)) === 1, 'the first payment row');
    victim.child.kill('SIGKILL');
    expect(await doomed).toBe('connection lost');

    // The dead owner's lease is still live (renewed every third of it): the key is busy.
    const early = await post(survivor.url, '/payments', { key, user, body });
    expect(early.status).toBe(409);
    expect((await record(key)).status).toBe('in_progress');

    let retry = early;
    await waitFor(async () => {
      retry = await post(survivor.url, '/payments', { key, user, body });
      return retry.status !== 409;
    }, 'the lease to lapse');
    expect(retry.status).toBe(201);
    expect((await record(key))).toMatchObject({ status: 'completed', response: { body: retry.text } });
    // Lease mode cannot know whether the dead request's write happened: the handler ran
    // again. This is the gap the transactional mode closes.
    expect(await count('payments', user)).toBe(2);
  });

  it('fences out a stalled owner that resumes after another request took its key over', async () => {
    const env = { PROVIDER_LATENCY_MS: '1500', IDEMPOTENCY_LEASE_MS: '500' };
    const [stalled, other] = await Promise.all([start(env), start(env)]);
    const user = 'fence-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { amount: 75, currency: 'EUR' };
    const original = post(stalled.url, '/payments', { key, user, body });
    await waitFor(async () => (await count('payments', user)) === 1, 'the first payment row');
    stalled.child.kill('SIGSTOP');
    await sleep(800);

    const takeover = await post(other.url, '/payments', { key, user, body });
    expect(takeover.status).toBe(201);
    expect((await record(key)).response.body).toBe(takeover.text);

    stalled.child.kill('SIGCONT');
    const late = await original;
    // The stalled request finished its own work and answers its own client...
    expect(late.status).toBe(201);
    expect(late.json.id).not.toBe(takeover.json.id);
    // ...but it could not overwrite the result of the request that took over.
    expect((await record(key))).toMatchObject({ status: 'completed', response: { body: takeover.text } });
    const replay = await post(stalled.url, '/payments', { key, user, body });
    expect(replay.text).toBe(takeover.text);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
  });
});
