import { afterAll, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DataSource } from 'typeorm';
import { PostgresIdempotencyStore } from '../../lib/index.js';
import { HOUR, identity, request, RESPONSE, won } from '../../lib/testing/index.js';
import { CreateIdempotencyKeys1764288000000, idempotencyMigrations } from '../../migrations/index.js';
import { cli } from '../support/cli.js';
import { admin, createTestDatabase, type TestDatabase } from '../support/database.js';
import { catalog, migrateWithTypeOrm } from '../support/schema-catalog.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * `nestjs-idempotency-postgres migrate`, the schema without TypeORM, as a real process: it
 * creates the schema, reports what it did for people and for scripts, is re-runnable and
 * safe to start twice at once, prints the SQL for other tools, and leaves a database the
 * store accepts at start-up.
 */
describe('command-line tool: migrate', () => {
  const databases: TestDatabase[] = [];
  const database = async () => {
    const db = await createTestDatabase({ migrate: false });
    databases.push(db);
    return db;
  };

  afterAll(async () => {
    for (const db of databases) await db.drop();
  });

  it('creates the schema on an empty database, says what it created, and the store then starts and works', async () => {
    const db = await database();
    const dataSource = new DataSource({ type: 'postgres', url: db.url });
    await dataSource.initialize();
    try {
      const store = new PostgresIdempotencyStore(dataSource);
      await expect(store.verify()).rejects.toThrow('table "idempotency_keys" does not exist');

      const created = await cli(['migrate'], { DATABASE_URL: db.url });
      expect(created.status).toBe(0);
      expect(created.stdout.split('\n')).toEqual([
        'schema created:',
        '  created constraint idempotency_keys_completed_check',
        '  created constraint idempotency_keys_in_progress_check',
        '  created constraint idempotency_keys_key_check',
        '  created constraint idempotency_keys_pkey',
        '  created constraint idempotency_keys_status_check',
        '  created constraint idempotency_settings_pkey',
        '  created function idempotency_keys_guard_transition()',
        '  created index idempotency_keys_expires_at_idx',
        '  created index idempotency_keys_pkey',
        '  created index idempotency_settings_pkey',
        '  created table idempotency_keys',
        '  created table idempotency_settings',
        '  created trigger idempotency_keys_guard_transition',
        '',
      ]);

      // The start-up check passes, and the store claims, completes and replays on it.
      await store.verify();
      expect((await store.sharedSecret()).length).toBe(32);
      const claim = request(identity());
      won(await store.claim(claim));
      expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
      expect((await store.find(claim.identity))?.response).toEqual(RESPONSE);
    } finally {
      await dataSource.destroy();
    }
  });

  it('run again, or on a database the TypeORM migrations made, reports the schema current (--json for scripts)', async () => {
    const db = await database();
    await migrateWithTypeOrm(db.url, idempotencyMigrations);
    const before = await catalog(db.pool);
    for (let run = 0; run < 2; run++) {
      const current = await cli(['migrate', '--json'], { DATABASE_URL: db.url });
      expect(current.status).toBe(0);
      expect(current.json).toEqual({ status: 'current', created: [], updated: [] });
    }
    expect(await catalog(db.pool)).toEqual(before);
    expect((await cli(['migrate'], { DATABASE_URL: db.url })).stdout).toBe('schema already current: nothing changed\n');
  });

  it('on the first version of the schema, reports what it brought up to date', async () => {
    const db = await database();
    await migrateWithTypeOrm(db.url, [CreateIdempotencyKeys1764288000000]);
    const updated = await cli(['migrate', '--json', '--database-url', db.url], {});
    expect(updated.status).toBe(0);
    expect(updated.json).toEqual({
      status: 'updated',
      created: [
        'constraint idempotency_settings_pkey',
        'index idempotency_settings_pkey',
        'table idempotency_settings',
      ],
      updated: ['function idempotency_keys_guard_transition()'],
    });
    expect(updated.stdout).not.toContain('schema brought up to date'); // --json: JSON only
    const text = await cli(['migrate'], { DATABASE_URL: db.url });
    expect(text.stdout).toBe('schema already current: nothing changed\n');
  });

  it('started twice at once on an empty database, succeeds twice: one creates, the other finds it current', async () => {
    const db = await database();
    const runs = await Promise.all([0, 1].map(() => cli(['migrate', '--json'], { DATABASE_URL: db.url })));
    expect(runs.map((run) => [run.status, run.stderr])).toEqual([
      [0, ''],
      [0, ''],
    ]);
    expect(runs.map((run) => run.json.status).sort()).toEqual(['created', 'current']);
    const reference = await database();
    await migrateWithTypeOrm(reference.url, idempotencyMigrations);
    expect(await catalog(db.pool)).toEqual(await catalog(reference.pool));
  });

  it('--print writes the SQL (sql/idempotency.sql) and needs no database; it belongs to migrate only', async () => {
    const printed = await cli(['migrate', '--print'], {});
    expect(printed.status).toBe(0);
    expect(printed.stdout).toBe(readFileSync(ROOT + 'sql/idempotency.sql', 'utf8'));
    const misplaced = await cli(['stats', '--print'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/postgres' });
    expect(misplaced.status).toBe(2);
    expect(misplaced.stderr).toContain('--print is an option of migrate');
    expect((await cli(['--help'], {})).stdout).toMatch(/^ {2}migrate {3}create the tables/m);
  });

  it('fails with status 1 and leaves nothing behind when the role may not create tables', async () => {
    const db = await database();
    const role = 'idem_migrate_' + randomBytes(6).toString('hex');
    await admin(`CREATE ROLE ${role} LOGIN NOSUPERUSER`);
    try {
      // Since PostgreSQL 15 only the owner may create in schema public; before, everyone.
      await db.pool.query('REVOKE CREATE ON SCHEMA public FROM PUBLIC');
      const url = new URL(db.url);
      url.username = role;
      const refused = await cli(['migrate'], { DATABASE_URL: url.toString() });
      expect(refused.status).toBe(1);
      expect(refused.stderr).toMatch(/^error: .*permission denied for schema public/);
      expect((await catalog(db.pool)).relations).toEqual([]);
    } finally {
      // The role owns nothing: its one statement that would have created something failed.
      await admin(`DROP ROLE IF EXISTS ${role}`);
    }
  });
});
