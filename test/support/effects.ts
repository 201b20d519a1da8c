import type pg from 'pg';

/**
 * A table of side effects for tests outside HTTP: each run of a guarded function inserts
 * one row, so "ran once" is a count of rows, read from PostgreSQL.
 */
export async function createEffectsTable(pool: pg.Pool): Promise<void> {
  await pool.query(`
    CREATE TABLE IF NOT EXISTS effects (
      id         bigserial   PRIMARY KEY,
      kind       text        NOT NULL,
      key        text        NOT NULL,
      pid        integer     NOT NULL DEFAULT pg_backend_pid(),
      created_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )`);
}

export const EFFECT_INSERT = 'INSERT INTO effects (kind, key) VALUES ($1, $2)';

export async function effectCount(pool: pg.Pool, kind: string, key?: string): Promise<number> {
  const { rows } =
    key === undefined
      ? await pool.query('SELECT count(*)::int AS n FROM effects WHERE kind = $1', [kind])
      : await pool.query('SELECT count(*)::int AS n FROM effects WHERE kind = $1 AND key = $2', [kind, key]);
  return rows[0].n as number;
}

/** Effects per key of one kind, e.g. `{ tick-1: 1, tick-2: 1 }`. */
export async function effectsPerKey(pool: pg.Pool, kind: string): Promise<Record<string, number>> {
  const { rows } = await pool.query(
    'SELECT key, count(*)::int AS n FROM effects WHERE kind = $1 GROUP BY key ORDER BY key',
    [kind],
  );
  return Object.fromEntries(rows.map((row) => [row.key as string, row.n as number]));
}

/** Effects of each of `keys` (0 for a key without any), e.g. `{ a: 1, b: 0 }`. */
export async function effectsOf(pool: pg.Pool, kind: string, keys: string[]): Promise<Record<string, number>> {
  const { rows } = await pool.query(
    'SELECT key, count(*)::int AS n FROM effects WHERE kind = $1 AND key = ANY($2) GROUP BY key',
    [kind, keys],
  );
  const counts = new Map(rows.map((row) => [row.key as string, row.n as number]));
  return Object.fromEntries(keys.map((key) => [key, counts.get(key) ?? 0]));
}
