import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { startEmbeddedDatabase } from '../../sample-app/embedded-database.js';
import { Cluster, waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { type HttpResult, post, send } from '../support/http.js';
import type { SampleProcess } from '../support/sample-process.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/**
 * Database faults under load, with the sample app as a real process whose every database
 * connection goes through a TCP proxy the test cuts at chosen moments. After each fault:
 * the process is alive and serving, no stored result is lost, no key stays blocked past
 * its lease, and in transactional mode every key has had exactly one effect.
 */
describe('chaos: database faults', () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  const cluster = new Cluster(() => db);
  const payment = { amount: 1200, currency: 'EUR' };
  const email = { to: 'ops@example.com', subject: 'Receipt' };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    await cluster.stopAll();
    await proxy?.close();
  });
  afterAll(async () => {
    await db?.drop();
  });

  const startBehindProxy = async (env: Record<string, string>): Promise<SampleProcess> => {
    proxy = await TcpProxy.start(db.url);
    return cluster.start({ DATABASE_URL: proxy.url(db.url), ...env });
  };

  /** The process has not died, and answers once the database is reachable again. */
  const expectServing = async (app: SampleProcess) => {
    expect(app.child.exitCode).toBeNull();
    expect(app.child.signalCode).toBeNull();
    await waitFor(async () => (await send(app.url, 'GET', '/health')).status === 200, 'the app to serve again');
    expect(app.output()).not.toMatch(/Unhandled 'error' event|uncaughtException/);
  };

  /** Retries a request as a client would until it gets a final answer. */
  const retryUntilDone = async (
    run: () => Promise<HttpResult>,
    done: (status: number) => boolean,
  ): Promise<HttpResult> => {
    for (let attempt = 0; ; attempt++) {
      const result = await run();
      if (done(result.status)) return result;
      if (attempt > 200) throw new Error(`no final answer after ${attempt} retries: ${result.status} ${result.text}`);
      await sleep(100);
    }
  };

  const burst = (count: number, run: () => Promise<HttpResult>) =>
    Promise.all(
      Array.from({ length: count }, () =>
        run().then(
          (r) => r.status,
          () => 'connection lost',
        ),
      ),
    );

  it('transactional: connections cut during bursts of duplicates leave exactly one payment per key', async () => {
    const app = await startBehindProxy({ PROVIDER_LATENCY_MS: '400' });
    const keys = Array.from({ length: 4 }, () => ({ key: randomUUID(), user: 'cut-' + randomUUID().slice(0, 8) }));
    const requests = keys.flatMap(({ key, user }) =>
      burst(15, () => post(app.url, '/payments', { key, user, body: payment })),
    );
    // Cut while every key's owner is inside its handler, its transaction open.
    await waitFor(async () => {
      const { rows } = await db.pool.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database()`,
      );
      return rows[0].n >= keys.length;
    }, 'every owner to be inside its transaction');
    const cut = proxy.cut();
    const statuses = (await Promise.all(requests)).flat();

    expect(cut).toBeGreaterThanOrEqual(keys.length);
    expect(statuses.filter((status) => status === 503).length).toBeGreaterThanOrEqual(keys.length);
    expect(statuses.every((status) => [201, 409, 503].includes(status as number))).toBe(true);
    await expectServing(app);
    for (const { key, user } of keys) {
      const final = await retryUntilDone(
        () => post(app.url, '/payments', { key, user, body: payment }),
        (s) => s === 201,
      );
      expect(await cluster.count('payments', user)).toBe(1);
      expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: final.text } });
    }
    console.log(
      `transactional burst: ${statuses.length} requests on ${keys.length} keys, ${cut} connections cut, ` +
        `statuses ${summary(statuses)}, payments per key 1`,
    );
  });

  // The connection drops after PostgreSQL committed but before its reply arrived: the
  // request cannot tell from the commit alone, so it looks the record up.
  it('transactional: a commit whose reply is lost answers with the stored result, not 503', async () => {
    const app = await startBehindProxy({});
    const key = randomUUID();
    const user = 'commit-' + randomUUID().slice(0, 8);
    proxy.loseNextReplyTo('COMMIT');
    const first = await post(app.url, '/payments', { key, user, body: payment });
    expect(proxy.cutCount).toBe(1);
    expect(first.status).toBe(201);
    const record = await cluster.record(key);
    expect(record).toMatchObject({ status: 'completed', response: { body: first.text } });
    const replay = await post(app.url, '/payments', { key, user, body: payment });
    expect(replay.text).toBe(first.text);
    expect(await cluster.count('payments', user)).toBe(1);
    await expectServing(app);
  });

  it('lease mode: connections cut during bursts of duplicates lose no result and block no key past its lease', async () => {
    const app = await startBehindProxy({ PROVIDER_LATENCY_MS: '400', IDEMPOTENCY_LEASE_MS: '1500' });
    const keys = Array.from({ length: 4 }, () => ({ key: randomUUID(), user: 'cut-' + randomUUID().slice(0, 8) }));
    const requests = keys.flatMap(({ key, user }) =>
      burst(15, () => post(app.url, '/emails', { key, user, body: email })),
    );
    await sleep(250);
    const cut = proxy.cut();
    const statuses = (await Promise.all(requests)).flat();

    expect(cut).toBeGreaterThan(0);
    await expectServing(app);
    const effects: number[] = [];
    for (const { key, user } of keys) {
      const started = Date.now();
      const final = await retryUntilDone(
        () => post(app.url, '/emails', { key, user, body: email }),
        (s) => s === 202,
      );
      // At worst the key waited for the lease of a claim whose reply the cut swallowed.
      expect(Date.now() - started).toBeLessThan(1500 + 2000);
      expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: final.text } });
      const replay = await post(app.url, '/emails', { key, user, body: email });
      expect(replay.text).toBe(final.text);
      effects.push(await cluster.count('emails', user));
    }
    // Lease mode's documented gap: an INSERT that committed while its reply was cut looks
    // failed to the handler, which releases the key; the retry then sends again.
    expect(effects.every((n) => n >= 1 && n <= 2)).toBe(true);
    console.log(
      `lease burst: ${statuses.length} requests on ${keys.length} keys, ${cut} connections cut, ` +
        `statuses ${summary(statuses)}, e-mails per key ${effects.join(',')}`,
    );
  });

  // Concurrent claims go to PostgreSQL as one statement. This one commits and its reply is
  // lost with the connection: each claim of the group runs again alone, and must find the
  // row it inserted (its own owner token) as won, not as another request's key in progress.
  it('lease mode: a group claim whose reply is lost still runs each of its requests once, none answered 409', async () => {
    const app = await startBehindProxy({});
    const calls = Array.from({ length: 40 }, () => ({ key: randomUUID(), user: 'group-' + randomUUID().slice(0, 8) }));
    proxy.loseNextReplyTo('WITH ORDINALITY');
    const answers = await Promise.all(
      calls.map(({ key, user }) => post(app.url, '/emails', { key, user, body: email })),
    );
    expect(proxy.cutCount).toBe(1);
    expect(summary(answers.map((answer) => answer.status))).toBe('202×40');
    for (const [i, { key, user }] of calls.entries()) {
      expect(await cluster.count('emails', user)).toBe(1);
      expect(await cluster.record(key)).toMatchObject({ status: 'completed', response: { body: answers[i].text } });
    }
    await expectServing(app);
  });

  it('lease mode: an outage shorter than the lease while the result is stored never runs the handler twice', async () => {
    const app = await startBehindProxy({ PROVIDER_LATENCY_MS: '600', IDEMPOTENCY_LEASE_MS: '6000' });
    const key = randomUUID();
    const user = 'outage-' + randomUUID().slice(0, 8);
    const first = post(app.url, '/emails', { key, user, body: email });
    await waitFor(async () => (await cluster.count('emails', user)) === 1, 'the e-mail row');
    const cut = proxy.down(); // before the handler returns: storing its result must fail
    await sleep(300);
    const during = await post(app.url, '/emails', { key, user, body: email });
    // The effect happened: its response is still this client's answer.
    const answered = await first;
    expect(answered.status).toBe(202);
    expect(during.status).toBe(503);
    await sleep(1200);
    proxy.up();

    await waitFor(async () => (await cluster.record(key))?.status === 'completed', 'the delayed completion', 6000);
    const retry = await post(app.url, '/emails', { key, user, body: email });
    expect(retry.status).toBe(202);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.text).toBe(answered.text);
    expect(await cluster.count('emails', user)).toBe(1);
    await expectServing(app);
    expect(app.output()).toMatch(/stored after \d+ attempts/);
    console.log(
      `outage during completion: ${cut} connections cut, 1.5 s down, e-mails 1, result stored after the outage`,
    );
  });

  // Backends killed while the pool hands connections out: node-postgres drops its own
  // 'error' listener at the hand-off, and a FATAL read in that tick must not end the process.
  it('a storm of killed backends under load: the process survives and every key completes', async () => {
    const app = await cluster.start({
      DATABASE_URL: `${db.url}?application_name=storm-app`,
      IDEMPOTENCY_LEASE_MS: '1500',
    });
    const keys = Array.from({ length: 50 }, () => ({ key: randomUUID(), user: 'storm-' + randomUUID().slice(0, 8) }));
    let storming = true;
    let killed = 0;
    const storm = (async () => {
      while (storming) {
        const { rows } = await db.pool.query(
          "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = 'storm-app'",
        );
        killed += rows[0].n;
        await sleep(25);
      }
    })();
    const statuses = (
      await Promise.all(
        keys.map(({ key, user }) => burst(3, () => post(app.url, '/emails', { key, user, body: email }))),
      )
    ).flat();
    await sleep(500);
    storming = false;
    await storm;

    expect(killed).toBeGreaterThan(0);
    await expectServing(app);
    for (const { key, user } of keys) {
      await retryUntilDone(
        () => post(app.url, '/emails', { key, user, body: email }),
        (status) => status === 202,
      );
      expect(await cluster.record(key)).toMatchObject({ status: 'completed' });
    }
    console.log(
      `kill storm: ${killed} backends killed, ${statuses.length} requests on ${keys.length} keys, statuses ${summary(statuses)}`,
    );
  });

  // Storing late is safe (the owner token fences it out if another request took the key
  // over), so it goes on past the lease: with no retry in between, the result is kept.
  it('lease mode: an outage longer than the lease still ends with the result stored', async () => {
    const app = await startBehindProxy({ PROVIDER_LATENCY_MS: '600', IDEMPOTENCY_LEASE_MS: '1500' });
    const key = randomUUID();
    const user = 'long-outage-' + randomUUID().slice(0, 8);
    const first = post(app.url, '/emails', { key, user, body: email });
    await waitFor(async () => (await cluster.count('emails', user)) === 1, 'the e-mail row');
    proxy.down();
    expect((await first).status).toBe(202);
    await sleep(2500);
    proxy.up();
    await waitFor(async () => (await cluster.record(key))?.status === 'completed', 'the late completion', 10_000);
    const retry = await post(app.url, '/emails', { key, user, body: email });
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await cluster.count('emails', user)).toBe(1);
  });

  it('a connection cut while a slow-path claim waits on a row lock gives 503, and the process keeps serving', async () => {
    const app = await startBehindProxy({});
    const key = randomUUID();
    const user = 'lock-' + randomUUID().slice(0, 8);
    // An expired record sends the claim down the slow path, where it waits on this lock.
    await db.pool.query(
      `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at)
       VALUES ($1, 'POST', '/emails', $2, 'x', 'in_progress', $3, now() - interval '1 minute', now() - interval '1 minute')`,
      [user, key, randomUUID()],
    );
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM idempotency_keys WHERE idempotency_key = $1 FOR UPDATE', [key]);
      const waiting = post(app.url, '/emails', { key, user, body: email });
      await waitFor(async () => {
        const { rows } = await db.pool.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`,
        );
        return rows[0].n > 0;
      }, 'the claim to wait on the row lock');
      const cut = proxy.cut();
      const refused = await waiting;
      expect(cut).toBeGreaterThan(0);
      expect(refused.status).toBe(503);
      expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(refused.json.type).toBe('urn:nestjs-idempotency:problem:store-unavailable');
      await holder.query('ROLLBACK');
    } finally {
      await holder.end();
    }
    await expectServing(app);
    const retry = await post(app.url, '/emails', { key, user, body: email });
    expect(retry.status).toBe(202);
    expect(await cluster.count('emails', user)).toBe(1);
  });

  it('a real PostgreSQL restart under traffic: the process survives, every key ends with one payment and its stored result', async () => {
    const port = 55000 + Math.floor(Math.random() * 2000);
    const dataDir = `.data/restart-${randomUUID().slice(0, 8)}`;
    let server = await startEmbeddedDatabase(dataDir, port);
    try {
      const app = await cluster.start({ DATABASE_URL: server.url, PROVIDER_LATENCY_MS: '150' });
      const keys = Array.from({ length: 12 }, () => ({
        key: randomUUID(),
        user: 'restart-' + randomUUID().slice(0, 8),
      }));
      const statuses: Array<number | string> = [];
      const traffic = (async () => {
        for (const { key, user } of keys) {
          statuses.push(...(await burst(3, () => post(app.url, '/payments', { key, user, body: payment }))));
        }
      })();
      await sleep(700);
      await server.stop();
      server = await startEmbeddedDatabase(dataDir, port);
      await traffic;

      await expectServing(app);
      const check = new pg.Pool({ connectionString: server.url, max: 2 });
      try {
        for (const { key, user } of keys) {
          const final = await retryUntilDone(
            () => post(app.url, '/payments', { key, user, body: payment }),
            (s) => s === 201,
          );
          const { rows } = await check.query('SELECT count(*)::int AS n FROM payments WHERE user_id = $1', [user]);
          expect(rows[0].n).toBe(1);
          const record = await check.query('SELECT status, response FROM idempotency_keys WHERE idempotency_key = $1', [
            key,
          ]);
          expect(record.rows[0]).toMatchObject({ status: 'completed', response: { body: final.text } });
        }
      } finally {
        await check.end();
      }
      expect(statuses.some((status) => status !== 201)).toBe(true); // the restart did hit requests
      console.log(
        `server restart: ${statuses.length} requests on ${keys.length} keys, statuses ${summary(statuses)}, payments per key 1`,
      );
    } finally {
      await cluster.stopAll();
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

function summary(statuses: Array<number | string>): string {
  const counts = new Map<string, number>();
  for (const status of statuses) counts.set(String(status), (counts.get(String(status)) ?? 0) + 1);
  return [...counts].map(([status, n]) => `${status}×${n}`).join(' ');
}
