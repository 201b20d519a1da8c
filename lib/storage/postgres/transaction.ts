import type { EntityManager, QueryRunner } from 'typeorm';
import type { RecordIdentity } from '../../core/record.js';
import type { ClaimRequest, ClaimResult, ResponsePayload, StoreTransaction } from '../idempotency.store.js';
import { type PoolClient } from './connection.js';
import {
  beginHandlerStatement,
  CONNECTION_ENDED,
  HANDLER_SAVEPOINT,
  QUERY_CANCELED,
  SQL_SET_LOCK_TIMEOUT,
} from './sql.js';
import { claimFast, claimUnderLock, completeOn } from './statements.js';

/**
 * The transaction of a transactional-mode request: the record is claimed in it, the
 * handler writes through its EntityManager, and the stored response commits with those
 * writes, or nothing does. Until it commits, the uncommitted primary-key entry is the
 * lock that duplicates wait on.
 */
export class PostgresStoreTransaction implements StoreTransaction {
  private settled = false;
  private lost = false;
  private readonly onError = () => {
    this.lost = true;
  };

  constructor(
    private readonly runner: QueryRunner,
    private readonly client: PoolClient,
  ) {
    // Held until the transaction settles: a dropped connection marks it lost, never crashes the process.
    client.on('error', this.onError);
  }

  get manager(): EntityManager {
    return this.runner.manager;
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

  async claim(request: ClaimRequest, waitUntil: number): Promise<ClaimResult> {
    try {
      return await this.claimOnce(request, waitUntil);
    } catch (error) {
      // The server's statement_timeout is shorter than this claim's wait: start over in a
      // fresh transaction whose statements it no longer bounds (lock_timeout does). Through
      // TypeORM, so that the new one gets the DataSource's isolation level and events.
      if ((error as { code?: string }).code !== QUERY_CANCELED || Date.now() >= waitUntil) throw error;
      await this.runner.rollbackTransaction();
      await this.runner.startTransaction();
      await this.client.query('SET LOCAL statement_timeout = 0');
      return this.claimOnce(request, waitUntil);
    }
  }

  private async claimOnce(request: ClaimRequest, waitUntil: number): Promise<ClaimResult> {
    // Each statement that may wait for a concurrent owner (its uncommitted claim, or its
    // row lock) gets the time left until waitUntil as its lock_timeout; the handler's own
    // statements run with the session's setting again (beginHandler()).
    const timeLeft = () => `${Math.max(1, Math.ceil(waitUntil - Date.now()))}ms`;
    return (
      (await claimFast(this.client, request, timeLeft())) ??
      (await claimUnderLock(this.client, request, async () => {
        await this.client.query(SQL_SET_LOCK_TIMEOUT, [timeLeft()]);
      }))
    );
  }

  async beginHandler(idleLimitMs: number): Promise<void> {
    await this.client.query(beginHandlerStatement(idleLimitMs));
  }

  async discardHandlerWrites(): Promise<void> {
    await this.client.query(`ROLLBACK TO SAVEPOINT ${HANDLER_SAVEPOINT}`);
  }

  complete(identity: RecordIdentity, ownerToken: string, response: ResponsePayload, ttlMs: number): Promise<boolean> {
    return completeOn(this.client, identity, ownerToken, response, ttlMs);
  }

  async commit(): Promise<void> {
    // TypeORM counts the handler's manager.transaction() calls; above 1, its commit would
    // only release a savepoint and leave ours open. Such a transaction still running when
    // the handler returned is a handler bug: refuse to commit half of its work.
    const depth = (this.runner as unknown as { transactionDepth: number }).transactionDepth;
    if (depth !== 1) throw new Error('a transaction the handler opened with manager.transaction() is still open');
    await this.runner.commitTransaction();
    this.settled = true;
    this.client.removeListener('error', this.onError);
    await this.runner.release();
  }

  /**
   * A raw ROLLBACK, whatever TypeORM's nesting count says, so that the connection never
   * returns to the pool inside a transaction. If even that fails, the connection is ended,
   * which makes the pool discard it (and PostgreSQL roll back).
   */
  async rollback(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    try {
      if (this.lost) throw new Error('connection lost');
      await this.client.query('ROLLBACK');
    } catch {
      await this.client.end().catch(() => undefined);
    } finally {
      this.client.removeListener('error', this.onError);
      await this.runner.release();
    }
  }
}
