import type { Queryable } from './connection.js';
import { IDEMPOTENCY_TABLE, SETTINGS_TABLE } from './sql.js';

/**
 * The library's schema objects as the database has them, each with its definition as
 * PostgreSQL prints it back: what `migrate` compares before and after applying the SQL to
 * say what it created or changed. Names resolve through the search_path, as the schema's
 * own unqualified statements do.
 */
const SQL_SCHEMA_OBJECTS = `
WITH tables AS (
  SELECT name, to_regclass(name) AS oid FROM unnest($1::text[]) AS name
)
SELECT 'table ' || t.name AS object,
       (SELECT string_agg(
                 format('%I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                        CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                        ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid)),
                 ', ' ORDER BY a.attnum)
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped) AS definition
FROM tables t WHERE t.oid IS NOT NULL
UNION ALL
SELECT 'constraint ' || c.conname, pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN tables t ON c.conrelid = t.oid
UNION ALL
SELECT 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN tables t ON i.indrelid = t.oid
UNION ALL
SELECT 'trigger ' || g.tgname, pg_get_triggerdef(g.oid)
FROM pg_trigger g JOIN tables t ON g.tgrelid = t.oid WHERE NOT g.tgisinternal
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p WHERE p.oid = to_regprocedure('idempotency_keys_guard_transition()')
ORDER BY 1`;

/** Object ("table idempotency_keys", "index …", "function …") to its definition. */
export type SchemaObjects = ReadonlyMap<string, string>;

export async function schemaObjects(db: Queryable): Promise<SchemaObjects> {
  const { rows } = await db.query<{ object: string; definition: string }>(SQL_SCHEMA_OBJECTS, [
    [IDEMPOTENCY_TABLE, SETTINGS_TABLE],
  ]);
  return new Map(rows.map((row) => [row.object, row.definition]));
}

/** What applying the schema did: objects that were absent, and objects whose definition changed. */
export interface SchemaChanges {
  readonly created: string[];
  readonly updated: string[];
}

export function schemaChanges(before: SchemaObjects, after: SchemaObjects): SchemaChanges {
  const created: string[] = [];
  const updated: string[] = [];
  for (const [object, definition] of after) {
    if (!before.has(object)) created.push(object);
    else if (before.get(object) !== definition) updated.push(object);
  }
  return { created, updated };
}
