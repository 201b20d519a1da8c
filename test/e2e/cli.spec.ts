import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CLI, cli } from '../support/cli.js';
import { waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { type AppRole, createAppRole } from '../support/roles.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

const PAYMENT = { amount: 1000, currency: 'EUR' };
const EMAIL = { to: 'ops@example.com', subject: 'stuck' };

/**
 * The operator's command-line tool, built and run as a process against the sample app's
 * database, logged in as a role with row privileges only (as in production).
 */
describe('command-line tool', () => {
  let db: TestDatabase;
  let role: AppRole;
  let app: SampleProcess | undefined;
  let env: Record<string, string>;
  const user = 'ops-' + randomUUID().slice(0, 8);
  const run = (...args: string[]) => cli(args, env);
  const count = async (sql: string, values: unknown[] = []) =>
    (await db.pool.query(`SELECT count(*)::int AS n FROM ${sql}`, values)).rows[0].n as number;

  beforeAll(async () => {
    db = await createTestDatabase();
    role = await createAppRole(db);
    env = { DATABASE_URL: role.url };
  });

  afterAll(async () => {
    await app?.kill('SIGKILL');
    await db?.drop();
    await role?.drop();
  });

  it('is the package bin, and this is its build', () => {
    const pkg = JSON.parse(readFileSync(ROOT + 'package.json', 'utf8'));
    expect(pkg.bin).toEqual({ 'nestjs-idempotency-postgres': './dist/esm/lib/cli/main.js' });
    expect(readFileSync(CLI, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  });

  it('refuses a wrong command line with status 2 and the usage, and a dead database with status 1', async () => {
    const noUrl = await cli(['stats'], {});
    expect(noUrl.status).toBe(2);
    expect(noUrl.stderr).toContain('DATABASE_URL is not set');
    expect(noUrl.stderr).toContain('Usage: nestjs-idempotency-postgres <command>');
    expect((await run('frobnicate')).status).toBe(2);
    expect((await run('inspect', '--key', 'k')).stderr).toContain('--route is required');
    expect((await run('list', '--older-than', 'soon')).status).toBe(2);
    const dead = await cli(['stats'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/postgres' });
    expect(dead.status).toBe(1);
    expect(dead.stderr).toMatch(/^error: .*ECONNREFUSED/);
  });

  it('lists a key left in progress by a killed process, and release frees it for the next request', async () => {
    // An instance that dies mid-request with a 10-minute lease: its key would answer 409 for 10 minutes.
    const dying = await startSampleApp({
      DATABASE_URL: role.url,
      PROVIDER_LATENCY_MS: '60000',
      IDEMPOTENCY_LEASE_MS: '600000',
    });
    const key = 'stuck-' + randomUUID();
    void post(dying.url, '/emails', { key, user, body: EMAIL }).catch(() => undefined);
    await waitFor(
      async () => (await count('emails WHERE user_id = $1', [user])) === 1,
      'the e-mail request to write its row, holding its key',
    );
    expect(await count("idempotency_keys WHERE idempotency_key = $1 AND status = 'in_progress'", [key])).toBe(1);
    await dying.kill('SIGKILL');
    app = await startSampleApp({ DATABASE_URL: role.url });

    const listed = await run('list', '--json');
    expect(listed.status).toBe(0);
    expect(listed.json).toEqual([
      expect.objectContaining({
        method: 'POST',
        route: '/emails',
        scope: user,
        key,
        status: 'in_progress',
        leaseLapsed: false,
        owner: expect.stringMatching(/^[0-9a-f-]{36}$/),
      }),
    ]);
    expect(listed.json[0].leaseLeftMs).toBeGreaterThan(500_000);
    const table = await run('list');
    expect(table.stdout.split('\n')[0]).toMatch(/^RECORD\s+AGE\s+LEASE\s+ROUTE\s+SCOPE\s+KEY$/);
    expect(table.stdout).toContain(key);
    expect((await run('list', '--older-than', '1h')).stdout).toContain('no in-progress record older than 1h');

    expect((await post(app.url, '/emails', { key, user, body: EMAIL })).status).toBe(409);
    const released = await run('release', '--route', '/emails', '--key', key, '--scope', user);
    expect(released.status).toBe(0);
    expect(released.stdout).toMatch(/^released record [0-9a-f]{12} \(POST \/emails\)/);
    expect(await count('idempotency_keys WHERE idempotency_key = $1', [key])).toBe(0);
    expect((await post(app.url, '/emails', { key, user, body: EMAIL })).status).toBe(202);
    expect(await count('emails WHERE user_id = $1', [user])).toBe(2); // the dead request's row, and the retry's

    const again = await run('release', '--route', '/emails', '--key', key, '--scope', user, '--json');
    expect(again.status).toBe(3);
    expect(again.json).toEqual({ record: expect.stringMatching(/^[0-9a-f]{12}$/), released: false });
  }, 90_000);

  it('inspects a completed record and tells whether a body is the same request', async () => {
    app ??= await startSampleApp({ DATABASE_URL: role.url });
    const key = 'inspect-' + randomUUID();
    expect((await post(app.url, '/payments', { key, user, body: PAYMENT })).status).toBe(201);
    const identity = ['--route', '/payments', '--key', key, '--scope', user];

    const same = await run('inspect', ...identity, '--body', '{"currency":"EUR","amount":1000}', '--json');
    expect(same.status).toBe(0);
    expect(same.json).toMatchObject({
      status: 'completed',
      owner: null,
      response: { status: 201, kind: 'json' },
      fingerprintMatch: 'match',
    });
    expect(same.json.ageMs).toBeGreaterThanOrEqual(0);
    const other = await run('inspect', ...identity, '--body', '{"currency":"EUR","amount":999}', '--json');
    expect(other.json.fingerprintMatch).toMatch(/^differs/);
    expect((await post(app.url, '/payments', { key, user, body: { ...PAYMENT, amount: 999 } })).status).toBe(422);

    const human = await run('inspect', ...identity);
    expect(human.stdout).toMatch(/^record: +[0-9a-f]{12}$/m);
    expect(human.stdout).toMatch(/^status: +completed$/m);
    expect(human.stdout).toMatch(/^response: +201 \(json\)$/m);

    const missing = await run('inspect', '--route', '/payments', '--key', key, '--scope', 'someone-else');
    expect(missing.status).toBe(3);
  }, 60_000);

  it('deletes a completed record before it expires, so that the key runs afresh', async () => {
    app ??= await startSampleApp({ DATABASE_URL: role.url });
    const key = 'delete-' + randomUUID();
    const first = await post(app.url, '/payments', { key, user, body: PAYMENT });
    expect(first.status).toBe(201);
    const deleted = await run('delete', '--route', '/payments', '--key', key, '--scope', user, '--json');
    expect(deleted.status).toBe(0);
    expect(deleted.json).toMatchObject({ deleted: true, was: 'completed' });
    const second = await post(app.url, '/payments', { key, user, body: PAYMENT });
    expect(second.status).toBe(201);
    expect(second.headers.get('idempotent-replayed')).toBeNull();
    expect(second.json.id).not.toBe(first.json.id);
    expect((await run('delete', '--route', '/payments', '--key', 'never-' + key, '--scope', user)).status).toBe(3);
  }, 60_000);

  it('stats counts records by status and route, and the table size', async () => {
    const stats = await run('stats', '--json');
    expect(stats.status).toBe(0);
    const completed = stats.json.groups.filter((group: { status: string }) => group.status === 'completed');
    expect(completed).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          method: 'POST',
          route: '/payments',
          count: await count("idempotency_keys WHERE route = '/payments'"),
        }),
        expect.objectContaining({ method: 'POST', route: '/emails', count: 1 }),
      ]),
    );
    expect(stats.json.tableBytes).toBeGreaterThan(0);
    expect(Date.parse(stats.json.oldest)).toBeLessThanOrEqual(Date.now());
    const human = await run('stats');
    expect(human.stdout).toMatch(/^STATUS\s+ROUTE\s+COUNT\s+LEASE LAPSED\s+OLDEST$/m);
    expect(human.stdout).toMatch(/^table size: +\d/m);
  });

  it('purge: a dry run counts, a real run deletes every expired record in batches and reports progress', async () => {
    const live = await count('idempotency_keys');
    // Expired records as a crash leaves them: in progress, lease and lifetime lapsed.
    const expired = 3000;
    await db.pool.query(
      `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
       SELECT 'purge', 'POST', '/payments', 'expired-' || n, 'x:y', 'in_progress', gen_random_uuid(),
              now() - interval '2 days', now() - interval '1 day', now() - interval '3 days'
       FROM generate_series(1, $1::int) AS n`,
      [expired],
    );

    const dry = await run('purge', '--dry-run', '--json');
    expect(dry.status).toBe(0);
    expect(dry.json).toMatchObject({ dryRun: true, expired });
    expect(await count('idempotency_keys')).toBe(live + expired);

    const purged = await run('purge', '--batch-size', '200', '--pause-ms', '150');
    expect(purged.status).toBe(0);
    expect(purged.stdout.trim()).toBe(`purged ${expired} expired records`);
    const progress = purged.stderr.trim().split('\n');
    expect(progress.length).toBeGreaterThanOrEqual(3); // 15 batches over ~2 s: a line a second, and the last
    for (const line of progress) expect(line).toMatch(new RegExp(`^purged \\d+ of ${expired} expired records$`));
    expect(progress.at(-1)).toBe(`purged ${expired} of ${expired} expired records`);
    expect(await count('idempotency_keys')).toBe(live);
  }, 60_000);
});
