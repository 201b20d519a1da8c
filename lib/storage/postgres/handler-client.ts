import type { PoolClient } from './connection.js';

/** Where the handler's nested transactions start: one savepoint per level. */
const NESTED_SAVEPOINT = 'idempotent_nested';

type Control = 'begin' | 'commit' | 'rollback';

/** Transaction control as node-postgres wrappers send it (Drizzle, Kysely, hand-written). */
const CONTROL: ReadonlyMap<string, Control> = new Map([
  ['begin', 'begin'],
  ['begin work', 'begin'],
  ['begin transaction', 'begin'],
  ['start transaction', 'begin'],
  ['commit', 'commit'],
  ['commit work', 'commit'],
  ['commit transaction', 'commit'],
  ['end', 'commit'],
  ['end work', 'commit'],
  ['end transaction', 'commit'],
  ['rollback', 'rollback'],
  ['rollback work', 'rollback'],
  ['rollback transaction', 'rollback'],
  ['abort', 'rollback'],
  ['abort work', 'rollback'],
  ['abort transaction', 'rollback'],
]);

/** A BEGIN that carries options (isolation level, read only): a nested level cannot have its own. */
const BEGIN_WITH_OPTIONS = /^(begin|start transaction)\s/;

/** COMMIT or ROLLBACK AND CHAIN: it would end the request's transaction and start another. */
const CHAINED = /^(commit|end|rollback|abort)( work| transaction)? and chain$/;

/**
 * The statement's text, normalised for the comparisons above, or undefined when it has
 * none. PostgreSQL runs `COMMIT ;`, a COMMIT after a comment and `COMMIT AND NO CHAIN` as a
 * COMMIT too: one of them left unrecognised would commit the idempotency record halfway.
 */
function controlText(statement: unknown): string | undefined {
  const text = typeof statement === 'string' ? statement : (statement as { text?: unknown } | null)?.text;
  if (typeof text !== 'string') return undefined;
  return text
    .replace(/\/\*[\s\S]*?\*\/|--[^\n]*/g, ' ')
    .replace(/^[\s;]+|[\s;]+$/g, '')
    .replace(/\s+/g, ' ')
    .toLowerCase()
    .replace(/ and no chain$/, '');
}

export class NestedTransactionError extends Error {}

/**
 * The connection of a transactional request as its handler gets it (`@IdempotentClient()`):
 * the node-postgres client itself, for raw SQL and for libraries that wrap one (Drizzle,
 * Kysely), guarded so that the handler cannot end the transaction that also holds its
 * idempotency record:
 *
 * - BEGIN, COMMIT and ROLLBACK become a savepoint, its release and a rollback to it, so
 *   that a wrapper's own `transaction()` nests inside the request's transaction (as
 *   TypeORM's `manager.transaction()` does there); a COMMIT or ROLLBACK with no BEGIN of
 *   the handler's before it is refused, as is a BEGIN with options of its own;
 * - `release()` does nothing (wrappers release what they acquired; the library owns this
 *   connection), and `end()` is refused;
 * - once the transaction has ended, every query is refused: the connection is back in the
 *   pool by then, in someone else's hands.
 *
 * Transaction control is recognised as a statement of its own, which is how the wrappers
 * and hand-written code send it; SQL is not parsed, so a COMMIT inside a longer
 * multi-statement text goes through.
 */
export class HandlerClient {
  /** The handler's open nested levels. */
  depth = 0;
  private ended = false;
  readonly client: PoolClient;

  constructor(connection: PoolClient) {
    const query = (...args: unknown[]) => this.query(connection, args);
    const release = () => undefined;
    const end = () => Promise.reject(new NestedTransactionError('the idempotency transaction owns this connection'));
    this.client = new Proxy(connection, {
      get: (target, property): unknown => {
        if (property === 'query') return query;
        if (property === 'release') return release;
        if (property === 'end') return end;
        const value = Reflect.get(target, property, target) as unknown;
        // Methods run on the client itself (its private fields); the class stays what it is, for `instanceof`-like checks.
        return typeof value === 'function' && property !== 'constructor'
          ? (value as (...args: unknown[]) => unknown).bind(target)
          : value;
      },
    });
  }

  /** From now on the client refuses every query. */
  end(): void {
    this.ended = true;
  }

  private query(connection: PoolClient, args: unknown[]): unknown {
    const callback = typeof args.at(-1) === 'function' ? (args.at(-1) as (error: Error) => void) : undefined;
    const submittable = typeof (args[0] as { submit?: unknown } | null)?.submit === 'function' ? args[0] : undefined;
    const refuse = (message: string) => {
      const error = new NestedTransactionError(message);
      if (submittable) {
        // As node-postgres refuses one (a cursor, a pg.Query): the caller listens on the object
        // it gets back, and a rejected promise in its place would end the process unhandled.
        const refused = submittable as { callback?: unknown; handleError(error: Error): void };
        if (callback && !refused.callback) refused.callback = callback;
        process.nextTick(() => refused.handleError(error));
        return submittable;
      }
      if (!callback) return Promise.reject(error);
      process.nextTick(callback, error);
      return undefined;
    };
    if (this.ended) return refuse('the idempotency transaction of this client has ended');
    const text = controlText(args[0]);
    const control = text === undefined ? undefined : CONTROL.get(text);
    if (control === undefined) {
      if (text !== undefined && BEGIN_WITH_OPTIONS.test(text)) {
        return refuse(
          `"${text}" inside the idempotency transaction: a nested transaction takes the request's isolation and access mode`,
        );
      }
      if (text !== undefined && CHAINED.test(text)) {
        return refuse(`"${text}" would end the idempotency transaction; throw from the handler to roll it back`);
      }
      return (connection.query as (...rest: unknown[]) => unknown)(...args);
    }
    const statement = this.translate(control);
    if (statement === undefined) {
      return refuse(
        `"${text}" with no transaction of the handler's open would end the idempotency transaction; ` +
          'throw from the handler to roll it back',
      );
    }
    // A statement that fails leaves its savepoint as it was: a SAVEPOINT that failed opened
    // no level, a RELEASE that failed (the level's transaction had failed) closed none, so
    // that the ROLLBACK a wrapper sends after a failed COMMIT rolls back to it.
    const undo = control === 'begin' ? -1 : 1;
    const send = (connection.query as (...rest: unknown[]) => Promise<unknown> | undefined).bind(connection);
    if (callback) {
      return send(statement, (error: Error | null, ...results: unknown[]) => {
        if (error) this.depth += undo;
        (callback as (...rest: unknown[]) => void)(error, ...results);
      });
    }
    return send(statement)!.catch((error: unknown) => {
      this.depth += undo;
      throw error;
    });
  }

  private translate(control: Control): string | undefined {
    if (control === 'begin') return `SAVEPOINT ${NESTED_SAVEPOINT}_${++this.depth}`;
    if (this.depth === 0) return undefined;
    const savepoint = `${NESTED_SAVEPOINT}_${this.depth--}`;
    return control === 'commit'
      ? `RELEASE SAVEPOINT ${savepoint}`
      : `ROLLBACK TO SAVEPOINT ${savepoint}; RELEASE SAVEPOINT ${savepoint}`;
  }
}
