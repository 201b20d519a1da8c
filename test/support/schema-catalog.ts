import type pg from 'pg';
import { DataSource, type MigrationInterface } from 'typeorm';

/**
 * Everything a database's `public` schema holds, as PostgreSQL prints it back, except
 * TypeORM's own `migrations` table: two databases with equal catalogs have the same
 * schema, down to column order, defaults, constraint and index definitions, the trigger
 * and the function's source text. Written apart from the library's own catalog reading
 * (lib/storage/postgres/schema-catalog.ts) so that the proof does not rest on it.
 */
export interface Catalog {
  relations: unknown[];
  columns: unknown[];
  constraints: unknown[];
  indexes: unknown[];
  triggers: unknown[];
  functions: unknown[];
}

/** TypeORM's bookkeeping table, or no table: objects of it (its key, its sequence) are left out. */
const TYPEORM = `COALESCE(to_regclass('public.migrations'), 0)`;

export async function catalog(db: pg.Pool | pg.Client): Promise<Catalog> {
  const rows = async (sql: string) => (await db.query(sql)).rows;
  return {
    relations: await rows(`
      SELECT c.relname, c.relkind FROM pg_class c
      LEFT JOIN pg_index i ON i.indexrelid = c.oid
      LEFT JOIN pg_depend d ON c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      WHERE c.relnamespace = 'public'::regnamespace
        AND COALESCE(i.indrelid, d.refobjid, c.oid) <> ${TYPEORM}
      ORDER BY c.relname`),
    columns: await rows(`
      SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default,
             character_maximum_length, collation_name, is_identity, is_generated
      FROM information_schema.columns
      WHERE table_schema = 'public' AND table_name <> 'migrations'
      ORDER BY table_name, ordinal_position`),
    constraints: await rows(`
      SELECT conrelid::regclass::text AS "table", conname, contype, condeferrable, convalidated,
             pg_get_constraintdef(oid) AS definition
      FROM pg_constraint
      WHERE connamespace = 'public'::regnamespace AND conrelid <> ${TYPEORM}
      ORDER BY 1, 2`),
    indexes: await rows(`
      SELECT tablename, indexname, indexdef FROM pg_indexes
      WHERE schemaname = 'public' AND tablename <> 'migrations'
      ORDER BY 1, 2`),
    triggers: await rows(`
      SELECT t.tgrelid::regclass::text AS "table", t.tgname, t.tgenabled, pg_get_triggerdef(t.oid) AS definition
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal AND t.tgrelid <> ${TYPEORM}
      ORDER BY 1, 2`),
    functions: await rows(`
      SELECT proname, pg_get_function_identity_arguments(oid) AS arguments, pg_get_functiondef(oid) AS definition
      FROM pg_proc WHERE pronamespace = 'public'::regnamespace
      ORDER BY 1, 2`),
  };
}

/** Runs migrations through a TypeORM DataSource, as an application that migrates with TypeORM does. */
export async function migrateWithTypeOrm(
  url: string,
  migrations: ReadonlyArray<new () => MigrationInterface>,
): Promise<void> {
  const migrator = new DataSource({ type: 'postgres', url, migrations: [...migrations] });
  await migrator.initialize();
  try {
    await migrator.runMigrations();
  } finally {
    await migrator.destroy();
  }
}
