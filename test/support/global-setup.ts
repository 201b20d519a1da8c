import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedDatabase } from '../../sample-app/embedded-database.js';

/**
 * With DATABASE_URL set, tests use that server (CI: the PostgreSQL on 127.0.0.1:5432).
 * Without it, an embedded PostgreSQL is started for the run. Each test file then creates
 * a database of its own on that server (see database.ts).
 */
export default async function globalSetup(): Promise<void> {
  // Broker suites that cannot run write a line here; the teardown prints them.
  process.env.SKIPPED_SUITES_FILE = join(mkdtempSync(join(tmpdir(), 'idempotency-test-')), 'skipped-suites.txt');
  if (process.env.DATABASE_URL) return;
  const port = Number(process.env.EMBEDDED_POSTGRES_TEST_PORT ?? 54330);
  const embedded = await startEmbeddedDatabase('.data/test-postgres', port);
  process.env.DATABASE_URL = embedded.url;
  (globalThis as { stopTestDatabase?: () => Promise<void> }).stopTestDatabase = () => embedded.stop();
}
