import type { KeyRow } from './statements.js';

/* The node-postgres pool underneath the DataSource, as the store uses it. */

/** A statement with its values, named when it is to be prepared. */
export interface QueryConfig {
  text: string;
  values?: unknown[];
  name?: string;
}

/** The subset of node-postgres' Pool and PoolClient this store uses. */
export interface Queryable {
  query<Row = KeyRow>(
    text: string | QueryConfig,
    values?: unknown[],
  ): Promise<{ rows: Row[]; rowCount: number | null }>;
}

/**
 * `db` with the store's hot statements sent as named (prepared) statements: node-postgres
 * parses one on a connection the first time, and only binds and executes it after that.
 */
export function preparing(db: Queryable, names: ReadonlyMap<string, string>): Queryable {
  return {
    query: (text, values) => {
      const name = typeof text === 'string' ? names.get(text) : undefined;
      return name ? db.query({ name, text: text as string, values }) : db.query(text, values);
    },
  };
}

export interface PoolClient extends Queryable {
  release(error?: Error | boolean): void;
  end(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): unknown;
  removeListener(event: 'error', listener: (error: Error) => void): unknown;
}
export interface Pool extends Queryable {
  connect(): Promise<PoolClient>;
  on(event: 'acquire', listener: (client: PoolClient) => void): unknown;
}

const guarded = new WeakSet<object>();

/**
 * node-postgres drops the pool's own 'error' listener from a client the moment it hands the
 * client out, and a connection that breaks in that same tick (a FATAL message read with the
 * reply before it) emits 'error' before any later listener exists: an unhandled 'error'
 * event ends the process. So every client of the pool gets a listener of its own, attached
 * synchronously on 'acquire', for good. It only keeps the process alive: the broken
 * connection still fails the query that uses it, and the pool discards it.
 */
export function guardClients(pool: Pool): void {
  if (guarded.has(pool)) return;
  guarded.add(pool);
  pool.on('acquire', (client) => {
    if (guarded.has(client)) return;
    guarded.add(client);
    client.on('error', () => {});
  });
}

export class PoolTimeoutError extends Error {
  constructor() {
    super('timed out waiting for a database connection from the pool');
  }
}

/**
 * Waits for a pooled connection until `deadline` at most; one that arrives later is handed
 * to `discard` (a connection the pool gives after the wait was abandoned is not leaked).
 */
export async function withinDeadline<T>(
  pending: Promise<T>,
  deadline: number | undefined,
  discard: (late: T) => void,
): Promise<T> {
  if (deadline === undefined) return pending;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PoolTimeoutError()), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([pending, expired]);
  } catch (error) {
    if (error instanceof PoolTimeoutError) pending.then(discard, () => undefined);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}
