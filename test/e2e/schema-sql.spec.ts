import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { IDEMPOTENCY_SCHEMA_SQL } from '../../lib/index.js';
import { CreateIdempotencyKeys1764288000000, idempotencyMigrations } from '../../migrations/index.js';
import { waitFor } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { type Catalog, catalog, migrateWithTypeOrm } from '../support/schema-catalog.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SQL_FILE = ROOT + 'sql/idempotency.sql';

function psql(file: string, url: string): Promise<{ status: number | null; output: string }> {
  const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', file, url], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, output }));
  });
}

/** A record as the store leaves one in each state: created by a claim, one of them completed. */
async function writeRecords(db: TestDatabase): Promise<void> {
  const insert = `
    INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at)
    VALUES ('tenant', 'POST', '/payments', $1, 'fp', 'in_progress', $2, now() + interval '1 minute', now() + interval '1 day')`;
  await db.pool.query(insert, ['live', randomUUID()]);
  await db.pool.query(insert, ['done', randomUUID()]);
  await db.pool.query(
    `UPDATE idempotency_keys SET status = 'completed', owner_token = NULL, locked_until = NULL,
       response = '{"status": 201}', completed_at = now()
     WHERE idempotency_key = 'done'`,
  );
}

async function rows(db: TestDatabase): Promise<unknown[]> {
  return (await db.pool.query('SELECT * FROM idempotency_keys ORDER BY idempotency_key')).rows;
}

async function triggerOid(db: TestDatabase): Promise<number> {
  const { rows } = await db.pool.query(`SELECT oid FROM pg_trigger WHERE tgname = 'idempotency_keys_guard_transition'`);
  return rows[0].oid;
}

/**
 * sql/idempotency.sql, the schema for applications that do not migrate with TypeORM, gives
 * exactly what the TypeORM migrations give (catalogs compared, the function's source text
 * included), from any starting point, as often as it is run, and with rows kept.
 */
describe('the schema as plain SQL', () => {
  const databases: TestDatabase[] = [];
  let expected: Catalog;
  const database = async () => {
    const db = await createTestDatabase({ migrate: false });
    databases.push(db);
    return db;
  };
  const apply = (db: TestDatabase) => db.pool.query(IDEMPOTENCY_SCHEMA_SQL);

  beforeAll(async () => {
    const reference = await database();
    await migrateWithTypeOrm(reference.url, idempotencyMigrations);
    expected = await catalog(reference.pool);
  });

  afterAll(async () => {
    for (const db of databases) await db.drop();
  });

  it('is what the package ships and the library exports, for this version, without PostgreSQL 14 syntax', () => {
    const file = readFileSync(SQL_FILE, 'utf8');
    expect(file).toBe(IDEMPOTENCY_SCHEMA_SQL);
    const pkg = JSON.parse(readFileSync(ROOT + 'package.json', 'utf8'));
    expect(pkg.files).toContain('sql');
    expect(file.split('\n')[0]).toContain(`nestjs-idempotency-postgres ${pkg.version},`);
    const statements = file
      .split('\n')
      .filter((line) => !line.trimStart().startsWith('--'))
      .join('\n');
    expect(statements).not.toMatch(/CREATE OR REPLACE TRIGGER/i); // PostgreSQL 14
    // What the comparisons below rest on: the TypeORM migrations made every kind of object.
    expect(expected.relations).toEqual([
      { relname: 'idempotency_keys', relkind: 'r' },
      { relname: 'idempotency_keys_expires_at_idx', relkind: 'i' },
      { relname: 'idempotency_keys_pkey', relkind: 'i' },
      { relname: 'idempotency_settings', relkind: 'r' },
      { relname: 'idempotency_settings_pkey', relkind: 'i' },
    ]);
    expect(expected.constraints).toHaveLength(6);
    expect(expected.triggers).toHaveLength(1);
    expect(expected.functions).toHaveLength(1);
  });

  it('run by psql on an empty database, gives exactly the schema of the TypeORM migrations', async () => {
    const db = await database();
    const run = await psql(SQL_FILE, db.url);
    expect(run.status).toBe(0);
    expect(run.output).not.toMatch(/ERROR|WARNING/);
    expect(await catalog(db.pool)).toEqual(expected);
  });

  it('run again, as one node-postgres query, changes nothing and keeps the rows', async () => {
    const db = await database();
    await apply(db);
    await writeRecords(db);
    const before = { rows: await rows(db), trigger: await triggerOid(db) };
    await apply(db);
    await apply(db);
    expect(await catalog(db.pool)).toEqual(expected);
    // The trigger is the one first created, not dropped and created again.
    expect({ rows: await rows(db), trigger: await triggerOid(db) }).toEqual(before);
  });

  it('over a database the TypeORM migrations made, changes nothing and keeps its rows', async () => {
    const db = await database();
    await migrateWithTypeOrm(db.url, idempotencyMigrations);
    await writeRecords(db);
    await db.pool.query(`INSERT INTO idempotency_settings (name, value) VALUES ('fingerprint_secret', 'kept')`);
    const before = {
      rows: await rows(db),
      settings: (await db.pool.query('SELECT * FROM idempotency_settings')).rows,
      trigger: await triggerOid(db),
    };
    expect(before.rows).toHaveLength(2);
    await apply(db);
    expect(await catalog(db.pool)).toEqual(expected);
    expect({
      rows: await rows(db),
      settings: (await db.pool.query('SELECT * FROM idempotency_settings')).rows,
      trigger: await triggerOid(db),
    }).toEqual(before);
  });

  it('over the first version of the schema (the first TypeORM migration only), brings it up to date with its rows', async () => {
    const db = await database();
    await migrateWithTypeOrm(db.url, [CreateIdempotencyKeys1764288000000]);
    await writeRecords(db);
    const before = await rows(db);
    expect(await catalog(db.pool)).not.toEqual(expected);
    const deleteCompleted = async () => {
      const client = await db.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SET LOCAL idempotency.operator_delete = 'on'`);
        await client.query(`DELETE FROM idempotency_keys WHERE idempotency_key = 'done'`);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        throw error;
      } finally {
        client.release();
      }
    };
    // The first version's guard refuses an operator's DELETE of a completed record.
    await expect(deleteCompleted()).rejects.toThrow('a completed record is kept until it expires');

    await apply(db);
    expect(await catalog(db.pool)).toEqual(expected);
    expect(await rows(db)).toEqual(before);
    await deleteCompleted();
    expect(await rows(db)).toEqual([before[1]]);
  });

  it('applied by two sessions at once on an empty database, succeeds in both', async () => {
    const db = await database();
    const [first, second] = [new pg.Client(db.url), new pg.Client(db.url)];
    const holder = new pg.Client(db.url);
    await Promise.all([first.connect(), second.connect(), holder.connect()]);
    try {
      // Both are made to wait for the schema's lock, then let go together: without the lock
      // the two CREATE TABLE IF NOT EXISTS race, and one fails on the catalog's unique index.
      const key = /pg_advisory_xact_lock\((\d+)\)/.exec(IDEMPOTENCY_SCHEMA_SQL)![1];
      await holder.query('SELECT pg_advisory_lock($1::bigint)', [key]);
      const both = Promise.all([first.query(IDEMPOTENCY_SCHEMA_SQL), second.query(IDEMPOTENCY_SCHEMA_SQL)]);
      await waitFor(
        async () =>
          (
            await db.pool.query(
              `SELECT count(*)::int AS n FROM pg_locks
               WHERE locktype = 'advisory' AND NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
            )
          ).rows[0].n === 2,
        'both sessions to wait for the schema lock',
      );
      await holder.query('SELECT pg_advisory_unlock($1::bigint)', [key]);
      await both;
      expect(await catalog(db.pool)).toEqual(expected);
    } finally {
      await Promise.all([first.end(), second.end(), holder.end()]);
    }
  });
});
