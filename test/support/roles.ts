import { randomBytes } from 'node:crypto';
import { admin, type TestDatabase } from './database.js';

export interface AppRole {
  name: string;
  /** The test database's URL, logged in as this role. */
  url: string;
  drop(): Promise<void>;
}

/**
 * A role as an application gets one in production: LOGIN, rows of the existing tables
 * and their sequences, and nothing else (no superuser, no ownership, so no
 * `session_replication_role`). It has a password, for servers that ask for one (the
 * embedded PostgreSQL of a run without DATABASE_URL); trust authentication ignores it.
 */
export async function createAppRole(db: TestDatabase): Promise<AppRole> {
  const name = 'idem_app_' + randomBytes(6).toString('hex');
  const password = randomBytes(12).toString('hex');
  await admin(`CREATE ROLE ${name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '${password}'`);
  await db.pool.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${name}`);
  await db.pool.query(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${name}`);
  const url = new URL(db.url);
  url.username = name;
  url.password = password;
  return {
    name,
    url: url.toString(),
    // After the database is dropped: a role that owns privileges in it cannot be dropped before.
    drop: () => admin(`DROP ROLE IF EXISTS ${name}`),
  };
}
