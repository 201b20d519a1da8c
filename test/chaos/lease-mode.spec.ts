import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';

/**
 * Lease mode (the sample app's POST /emails) under crashes, with real processes: a
 * killed owner blocks its key only for its lease, and a stalled owner that comes back
 * cannot overwrite the result of the request that took over.
 */
describe('chaos: lease mode', () => {
  let db: TestDatabase;
  const cluster = new Cluster(() => db);
  const body = { to: 'someone@example.com', subject: 'receipt' };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(() => cluster.stopAll());
  afterAll(async () => {
    await db?.drop();
  });

  it('refuses the retry (409) while the dead owner’s lease runs, and runs it once the lease lapsed', async () => {
    const env = { PROVIDER_LATENCY_MS: '3000', IDEMPOTENCY_LEASE_MS: '1000' };
    const [victim, survivor] = await Promise.all([
      cluster.start(env),
      cluster.start({ ...env, PROVIDER_LATENCY_MS: '0' }),
    ]);
    const user = 'crash-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const doomed = post(victim.url, '/emails', { key, user, body }).catch(() => 'connection lost');
    await waitFor(async () => (await cluster.count('emails', user)) === 1, 'the first e-mail row');
    victim.child.kill('SIGKILL');
    expect(await doomed).toBe('connection lost');

    // The dead owner's lease is still live (it was renewed every third of it).
    const early = await post(survivor.url, '/emails', { key, user, body });
    expect(early.status).toBe(409);
    expect(early.headers.get('retry-after')).toBe('1');
    expect((await cluster.record(key)).status).toBe('in_progress');

    let retry = early;
    await waitFor(async () => {
      retry = await post(survivor.url, '/emails', { key, user, body });
      return retry.status !== 409;
    }, 'the lease to lapse');
    expect(retry.status).toBe(202);
    expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: retry.text } });
    // Lease mode cannot know whether the dead request's write happened: the handler ran
    // again. This is the gap the transactional mode closes (see the transactional chaos tests).
    expect(await cluster.count('emails', user)).toBe(2);
  });

  it('fences out a stalled owner that resumes after another request took its key over', async () => {
    const env = { PROVIDER_LATENCY_MS: '1500', IDEMPOTENCY_LEASE_MS: '500' };
    const [stalled, other] = await cluster.startMany(2, env);
    const user = 'fence-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const original = post(stalled.url, '/emails', { key, user, body });
    await waitFor(async () => (await cluster.count('emails', user)) === 1, 'the first e-mail row');
    stalled.child.kill('SIGSTOP');
    await sleep(800);

    const takeover = await post(other.url, '/emails', { key, user, body });
    expect(takeover.status).toBe(202);
    expect((await cluster.record(key)).response.body).toBe(takeover.text);

    stalled.child.kill('SIGCONT');
    const late = await original;
    // The stalled request finished its own work and answers its own client...
    expect(late.status).toBe(202);
    expect(late.json.id).not.toBe(takeover.json.id);
    // ...but it could not overwrite the result of the request that took over.
    expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: takeover.text } });
    const replay = await post(stalled.url, '/emails', { key, user, body });
    expect(replay.text).toBe(takeover.text);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
  });
});
