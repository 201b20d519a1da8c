import type { EntityManager } from 'typeorm';
import type { RecordIdentity } from '../../core/record.js';
import type { ClaimRequest, ClaimResult, ResponsePayload, StoreTransaction } from '../idempotency.store.js';
import { type PoolClient } from './connection.js';
import { HandlerClient } from './handler-client.js';
import { inline, literal } from './literals.js';
import {
  beginHandlerStatement,
  CONNECTION_ENDED,
  HANDLER_SAVEPOINT,
  PREPARED_STATEMENT_EXISTS,
  PREPARED_STATEMENT_MISSING,
  QUERY_CANCELED,
  SQL_CLAIM,
  SQL_COMPLETE_OR_FAIL,
  SQL_PREPARE_TRANSACTIONAL,
  SQL_SET_LOCK_TIMEOUT,
  TX_CLAIM,
  TX_COMPLETE,
} from './sql.js';
import {
  claimParameters,
  claimUnderLock,
  fastClaimResult,
  identityParameters,
  type KeyRow,
  responseText,
  unstorableOrSelf,
} from './statements.js';
import type { TransactionHost } from './transaction-host.js';

/**
 * The connections on which this process has prepared transactional mode's statements. A
 * prepared statement outlives the transaction that made it, even one rolled back, until
 * its session ends.
 */
const preparedOn = new WeakSet<object>();

/** The isolation levels BEGIN accepts, as TypeORM names them in a DataSource's options. */
const ISOLATION_LEVELS = new Set(['READ UNCOMMITTED', 'READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE']);

/**
 * The transaction of a transactional-mode request: the record is claimed in it, the
 * handler writes through its EntityManager, and the stored response commits with those
 * writes, or nothing does. Until it commits, the uncommitted primary-key entry is the
 * lock that duplicates wait on.
 *
 * It costs the request two round trips of its own. The first sends BEGIN, the claim and
 * the start of the handler's part as one simple query; the last sends the completion and
 * COMMIT. Simple queries take no parameters, so their values travel as escaped literals.
 * TypeORM's QueryRunner is told of the transaction as its own startTransaction() and
 * commitTransaction() would (depth, events), so that the handler's manager.transaction()
 * calls nest as savepoints inside it.
 */
export class PostgresStoreTransaction implements StoreTransaction {
  private settled = false;
  private lost = false;
  private readonly connection: PoolClient;
  private readonly handlerClient: HandlerClient;
  /** Whether the claim and completion run as prepared statements (SQL PREPARE, then EXECUTE). */
  private readonly prepared: boolean;
  /** BEGIN, with the DataSource's isolation level if it sets one (as TypeORM's own transactions would). */
  private readonly begin: string;
  private readonly onError = () => {
    this.lost = true;
  };

  constructor(
    private readonly host: TransactionHost,
    { isolationLevel, prepared }: { isolationLevel?: string; prepared: boolean },
  ) {
    this.prepared = prepared;
    this.connection = host.client;
    this.handlerClient = new HandlerClient(host.client);
    if (isolationLevel !== undefined && !ISOLATION_LEVELS.has(isolationLevel)) {
      throw new Error(`IdempotencyModule: unknown isolation level ${JSON.stringify(isolationLevel)}`);
    }
    this.begin = isolationLevel ? `BEGIN ISOLATION LEVEL ${isolationLevel}` : 'BEGIN';
    // Held until the transaction settles: a dropped connection marks it lost, never crashes the process.
    this.connection.on('error', this.onError);
  }

  get manager(): EntityManager | undefined {
    return this.host.manager;
  }

  /** The connection as the handler gets it: node-postgres' client, guarded. */
  get client(): PoolClient {
    return this.handlerClient.client;
  }

  /**
   * Whether the connection broke: its 'error' event came, or `cause` (what the handler
   * threw) is a connection failure, which can reach the handler before the event does.
   */
  isLost(cause?: unknown): boolean {
    if (this.lost) return true;
    const error = cause as
      { code?: unknown; driverError?: { code?: unknown; message?: unknown }; message?: unknown } | undefined;
    const code = error?.driverError?.code ?? error?.code;
    const text = error?.driverError?.message ?? error?.message;
    const message = typeof text === 'string' ? text : '';
    return (
      (typeof code === 'string' && (code.startsWith('08') || CONNECTION_ENDED.has(code))) ||
      /Connection terminated|not queryable|Client was closed/i.test(message)
    );
  }

  async claim(request: ClaimRequest, waitUntil: number, idleLimitMs: number): Promise<ClaimResult> {
    let withoutStatementTimeout = false;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.claimOnce(request, waitUntil, idleLimitMs, withoutStatementTimeout);
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (attempt >= 2) throw error;
        if (code === QUERY_CANCELED && Date.now() < waitUntil) {
          // The server's statement_timeout is shorter than this claim's wait: start over in a
          // fresh transaction whose statements it no longer bounds (lock_timeout does).
          withoutStatementTimeout = true;
        } else if (code === PREPARED_STATEMENT_MISSING) {
          preparedOn.delete(this.connection); // the session was reset under us: prepare again
        } else if (code === PREPARED_STATEMENT_EXISTS) {
          preparedOn.add(this.connection); // prepared by another copy of the library
        } else {
          throw error;
        }
        await this.connection.query('ROLLBACK');
        await this.host.ended('Rollback');
      }
    }
  }

  /**
   * Each statement that may wait for a concurrent owner (its uncommitted claim, or its row
   * lock) gets the time left until waitUntil as its lock_timeout; the handler's own
   * statements run with the session's setting again (beginHandlerStatement). The record a
   * won fast path inserts takes its times from the query's arrival, before any lock wait:
   * harmless, since no one sees it before it commits as completed, with times of its own.
   */
  private async claimOnce(
    request: ClaimRequest,
    waitUntil: number,
    idleLimitMs: number,
    withoutStatementTimeout: boolean,
  ): Promise<ClaimResult> {
    const timeLeft = () => `${Math.max(1, Math.ceil(waitUntil - Date.now()))}ms`;
    // One statement per element: the claim's result is the one at its index.
    const before = [
      ...this.preparation(),
      this.begin,
      inline('SET LOCAL lock_timeout = $1', [timeLeft()]),
      ...(withoutStatementTimeout ? ['SET LOCAL statement_timeout = 0'] : []),
    ];
    const claim = this.statement(SQL_CLAIM, TX_CLAIM, claimParameters(request));
    // Sent whatever the claim finds: a claim that is not won rolls all of it back.
    const text = [...before, claim, beginHandlerStatement(idleLimitMs)].join(';\n');
    await this.host.starting();
    const results = (await this.connection.query(text)) as unknown as { rows: KeyRow[] }[];
    if (this.prepared) preparedOn.add(this.connection);
    await this.host.started();
    const fast = fastClaimResult(results[before.length].rows[0]);
    if (fast) return fast;
    const slow = await claimUnderLock(this.connection, request, async () => {
      await this.connection.query(SQL_SET_LOCK_TIMEOUT, [timeLeft()]);
    });
    // The savepoint sent above precedes the slow path's change: the handler's starts after it.
    if (slow.claimed) await this.connection.query(beginHandlerStatement(idleLimitMs));
    return slow;
  }

  async discardHandlerWrites(): Promise<void> {
    // The handler has thrown, but what it left running may still write through its client:
    // a write sent after the rollback below would commit with the stored error.
    this.handlerClient.end();
    await this.connection.query(`ROLLBACK TO SAVEPOINT ${HANDLER_SAVEPOINT}`);
    this.handlerClient.depth = 0; // the handler's savepoints went with it
  }

  async commit(identity: RecordIdentity, ownerToken: string, response: ResponsePayload, ttlMs: number): Promise<void> {
    // A nested transaction the handler opened and never ended is a handler bug: refuse to
    // commit half of its work.
    if (this.host.nestedOpen() || this.handlerClient.depth > 0) {
      throw new Error('a transaction the handler opened (manager.transaction(), or BEGIN on its client) is still open');
    }
    const completion = this.statement(SQL_COMPLETE_OR_FAIL, TX_COMPLETE, [
      ...identityParameters(identity),
      ownerToken,
      responseText(response),
      ttlMs,
    ]);
    await this.host.committing();
    this.handlerClient.end();
    try {
      await this.connection.query(`${completion};\nCOMMIT`);
    } catch (error) {
      throw unstorableOrSelf(error);
    }
    this.settled = true;
    try {
      // Subscribers run after the commit: one that throws must not keep the connection from the pool.
      await this.host.ended('Commit');
    } finally {
      this.connection.removeListener('error', this.onError);
      await this.host.release(false);
    }
  }

  /**
   * A raw ROLLBACK, whatever TypeORM's nesting count says, so that the connection never
   * returns to the pool inside a transaction. If even that fails, the connection is ended,
   * which makes the pool discard it (and PostgreSQL roll back).
   */
  async rollback(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    this.handlerClient.end();
    let broken = false;
    try {
      if (this.lost) throw new Error('connection lost');
      await this.connection.query('ROLLBACK');
    } catch {
      broken = true;
      await this.connection.end().catch(() => undefined);
    } finally {
      this.connection.removeListener('error', this.onError);
      await this.host.ended('Rollback').catch(() => undefined);
      await this.host.release(broken);
    }
  }

  /** The PREPAREs to send first, on a connection that has not had them yet. */
  private preparation(): string[] {
    return this.prepared && !preparedOn.has(this.connection) ? SQL_PREPARE_TRANSACTIONAL : [];
  }

  /** A statement with its values as literals: EXECUTE of its prepared form, or the statement itself. */
  private statement(sql: string, prepared: string, values: unknown[]): string {
    return this.prepared ? `EXECUTE ${prepared}(${values.map(literal).join(', ')})` : inline(sql, values);
  }
}
