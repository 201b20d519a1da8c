import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { sampleMigrations } from '../../sample-app/migrations/index.js';

export interface TestDatabase {
  name: string;
  url: string;
  /** A small pool for assertions on rows. */
  pool: pg.Pool;
  drop(): Promise<void>;
}

function serverUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: the Jest global setup should have set it');
  return url;
}

/** A URL for another database on the same server. */
export function databaseUrl(name: string): string {
  const url = new URL(serverUrl());
  url.pathname = '/' + name;
  return url.toString();
}

/**
 * A fresh database, by default with the library's and the sample app's migrations
 * applied, run through TypeORM exactly as an application runs them.
 */
export async function createTestDatabase({ migrate = true } = {}): Promise<TestDatabase> {
  const name = 'idem_test_' + randomBytes(6).toString('hex');
  await admin(`CREATE DATABASE ${name}`);
  const url = databaseUrl(name);
  if (migrate) {
    const migrator = new DataSource({
      type: 'postgres',
      url,
      migrations: sampleMigrations,
    });
    await migrator.initialize();
    await migrator.runMigrations();
    await migrator.destroy();
  }
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  // Tests terminate backends on purpose; an idle client's error must not crash the run.
  pool.on('error', () => {});
  return {
    name,
    url,
    pool,
    async drop() {
      await pool.end();
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** Runs a statement on the server's maintenance database. */
export async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
