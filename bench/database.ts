import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { startEmbeddedDatabase } from '../sample-app/embedded-database.js';
import { sampleMigrations } from '../sample-app/migrations/index.js';

export interface BenchDatabase {
  /** A fresh database with the library's and the sample app's migrations applied. */
  url: string;
  /** Drops the database (and stops the embedded server, if one was started). */
  drop(): Promise<void>;
}

/**
 * A database of its own for one bench run, on the server of DATABASE_URL, or on an
 * embedded PostgreSQL when it is unset.
 */
export async function benchDatabase(prefix: string): Promise<BenchDatabase> {
  const embedded = process.env.DATABASE_URL
    ? undefined
    : await startEmbeddedDatabase('.data/bench-postgres', Number(process.env.EMBEDDED_POSTGRES_BENCH_PORT ?? 54331));
  if (embedded) console.log('[bench] DATABASE_URL is unset: using an embedded PostgreSQL (.data/bench-postgres)');
  const serverUrl = process.env.DATABASE_URL ?? embedded!.url;
  const name = prefix + randomBytes(4).toString('hex');
  await adminQuery(serverUrl, `CREATE DATABASE ${name}`);
  const url = new URL(serverUrl);
  url.pathname = '/' + name;
  const migrator = new DataSource({ type: 'postgres', url: url.toString(), migrations: sampleMigrations });
  await migrator.initialize();
  try {
    await migrator.runMigrations();
  } finally {
    await migrator.destroy();
  }
  return {
    url: url.toString(),
    drop: async () => {
      await adminQuery(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
      await embedded?.stop();
    },
  };
}

async function adminQuery(serverUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
