import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { Client, Pool } from 'pg';
import { APP_SCHEMA } from './schema';

export interface TestDatabase {
  url: string;
  pool: Pool;
  count(sql: string, parameters?: unknown[]): Promise<number>;
  record(key: string): Promise<{ status: string; response: { status: number; body: string } } | undefined>;
  drop(): Promise<void>;
}

async function onServer(serverUrl: string, sql: string): Promise<void> {
  const client = new Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/**
 * A database of its own on the server DATABASE_URL names, with the schema a user without
 * TypeORM applies: the library's `migrate` command, then the application's own tables.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) throw new Error('DATABASE_URL must name a PostgreSQL server');
  const name = `compat_${randomUUID().replaceAll('-', '')}`;
  const url = Object.assign(new URL(serverUrl), { pathname: `/${name}` }).toString();
  await onServer(serverUrl, `CREATE DATABASE ${name}`);
  await promisify(execFile)('npx', ['--no-install', 'nestjs-idempotency-postgres', 'migrate'], {
    env: { ...process.env, DATABASE_URL: url },
  });
  const pool = new Pool({ connectionString: url, max: 2 });
  await pool.query(APP_SCHEMA);
  return {
    url,
    pool,
    async count(sql, parameters = []) {
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${sql}`, parameters);
      return rows[0].n;
    },
    async record(key) {
      const { rows } = await pool.query('SELECT status, response FROM idempotency_keys WHERE idempotency_key = $1', [
        key,
      ]);
      return rows[0];
    },
    async drop() {
      await pool.end();
      await onServer(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

export interface Answer {
  status: number;
  body: string;
  replayed: string | null;
}

export async function post(baseUrl: string, path: string, body: unknown, key: string): Promise<Answer> {
  const response = await fetch(`${baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-user-id': 'alice', 'idempotency-key': key },
    body: JSON.stringify(body),
  });
  return {
    status: response.status,
    body: await response.text(),
    replayed: response.headers.get('idempotent-replayed'),
  };
}
