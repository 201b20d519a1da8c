import { schemaChanges, schemaObjects } from '../storage/postgres/schema-catalog.js';
import { SCHEMA_LOCK_KEY, IDEMPOTENCY_SCHEMA_SQL } from '../storage/postgres/schema.js';
import type { CommandContext, CommandResult } from './commands.js';

/**
 * `migrate`: applies the schema's SQL (the same text as the package's sql/idempotency.sql)
 * to the database, and says what it created or changed. Needs a role that may create
 * tables, unlike the other commands.
 */
export async function migrate({ db }: CommandContext): Promise<CommandResult> {
  // Held across the three steps below, so that "before" and "after" are this run's own
  // and two runs at once report created once and current once.
  await db.query('SELECT pg_advisory_lock($1::bigint)', [SCHEMA_LOCK_KEY]);
  try {
    const before = await schemaObjects(db);
    try {
      // One simple query, values omitted: node-postgres sends the whole file at once,
      // with its own BEGIN and COMMIT.
      await db.query(IDEMPOTENCY_SCHEMA_SQL);
    } catch (error) {
      // A failed statement skips the rest of the text, its COMMIT included.
      await db.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
    const { created, updated } = schemaChanges(before, await schemaObjects(db));
    const status = created.length + updated.length === 0 ? 'current' : before.size === 0 ? 'created' : 'updated';
    const lines =
      status === 'current'
        ? ['schema already current: nothing changed']
        : [
            status === 'created' ? 'schema created:' : 'schema brought up to date:',
            ...created.map((object) => `  created ${object}`),
            ...updated.map((object) => `  updated ${object}`),
          ];
    return { text: lines.join('\n'), json: { status, created, updated }, status: 0 };
  } finally {
    // A failure here must not hide the error above; the lock ends with the session anyway.
    await db.query('SELECT pg_advisory_unlock($1::bigint)', [SCHEMA_LOCK_KEY]).catch(() => undefined);
  }
}
