import { performance } from 'node:perf_hooks';
import { describeError, RequestInProgressError } from '../errors.js';
import type { StoreTransaction } from '../storage/idempotency.store.js';
import type { Execution, Outcome } from './execution.js';
import { type Attempt, type ExecutionMode, type Flow, where } from './flow.js';
import { runInTransaction } from './idempotent-transaction.js';
import type { ObservedRecord, StoredResponse } from './record.js';

/** PostgreSQL's lock_not_available: a lock_timeout ran out. */
const LOCK_TIMEOUT = '55P03';

/**
 * Transactional mode: the claim stays uncommitted while the handler runs in the same
 * transaction, and its writes commit together with the stored result, or not at all. A
 * duplicate's claim waits on the uncommitted row, inside PostgreSQL, until the owner
 * commits (then it replays) or rolls back (then it owns the key), for at most the time
 * it may wait.
 */
export class TransactionalMode implements ExecutionMode {
  /** Its claim opens a transaction first: a replay is cheaper as a look-up before it. */
  readonly claimAnswersReplays = false;
  constructor(private readonly flow: Flow) {}

  async begin(attempt: Attempt): Promise<Outcome> {
    const { flow } = this;
    for (let round = 0; ; round++) {
      const request = flow.claimRequest(attempt);
      const transaction = await flow.storeCall(() => flow.store.openTransaction(attempt.acquireBy));
      const claimedAt = performance.now();
      let observed: ObservedRecord;
      try {
        // 'reject': waitUntil is now, so the claim waits 1 ms at most for another owner.
        const claim = await transaction.claim(request, attempt.waitUntil, attempt.options.leaseMs);
        if (claim.claimed) {
          return {
            kind: 'execute',
            execution: flow.executionOf(attempt, request, claim, claimedAt, transaction),
          };
        }
        observed = claim.observed;
        // Its look-up found no completed record: the claim waited on the other call's
        // uncommitted claim until that call committed (or it completed in between).
        if (observed.record.status === 'completed') this.waitedSince(attempt, claimedAt);
      } catch (error) {
        await transaction.rollback();
        if ((error as { code?: string }).code === LOCK_TIMEOUT) {
          this.waitedSince(attempt, claimedAt);
          throw new RequestInProgressError(attempt.options.retryAfterSeconds);
        }
        throw flow.unavailable(error);
      }
      await transaction.rollback();
      // Only a lease-mode record (the route's mode changed) can be seen in progress here.
      const answer = await flow.answerOrWait(observed, attempt, round);
      if (answer) return answer;
    }
  }

  /**
   * A claim that waited in PostgreSQL on another call's uncommitted claim of the key: only
   * `'wait'` calls do (a `'reject'` claim's lock wait is bounded to a millisecond).
   */
  private waitedSince(attempt: Attempt, claimedAt: number): void {
    if (attempt.options.concurrency === 'wait') attempt.waiting.since ??= claimedAt;
  }

  /** The handler runs with the transaction in context (`IdempotentTransaction`, `@IdempotentManager()`). */
  runHandler<T>(execution: Execution, handler: () => Promise<T>): Promise<T> {
    return runInTransaction(transactionOf(execution), handler, where(execution));
  }

  /**
   * The result commits with the handler's writes. If the commit fails, neither happened,
   * and the caller gets 503 (so it retries; nothing is left claimed), unless the record
   * turns out to be completed after all (the connection broke after PostgreSQL committed):
   * then the stored result is the answer.
   */
  async complete(execution: Execution, response: StoredResponse): Promise<StoredResponse | undefined> {
    const { identity, ownerToken, options } = execution;
    const transaction = transactionOf(execution);
    const { flow } = this;
    try {
      const payload = flow.cipher.seal(identity, response);
      await transaction.commit(identity, ownerToken, payload, options.ttlMs);
      return undefined;
    } catch (error) {
      await transaction.rollback();
      // Committed after all? Then the stored result is this caller's (or an equal one's) answer.
      const stored = await flow.store.find(identity, Date.now() + options.waitTimeoutMs).catch(() => null);
      if (stored?.status === 'completed' && stored.fingerprint === execution.fingerprint) return flow.open(stored);
      throw flow.unavailable(error);
    } finally {
      execution.finish();
    }
  }

  /** The error is the answer, so the handler's writes are undone; the claim stays and stores it. */
  async completeWithError(execution: Execution, response: StoredResponse, error: unknown): Promise<unknown> {
    try {
      await transactionOf(execution).discardHandlerWrites();
    } catch (discardError) {
      await this.release(execution);
      return this.flow.unavailable(discardError);
    }
    try {
      await this.complete(execution, response);
    } catch (commitError) {
      return commitError;
    }
    return error;
  }

  /** Nothing of the handler's survives the rollback: a retry may run it again. */
  abandon(execution: Execution): Promise<void> {
    return this.release(execution);
  }

  async release(execution: Execution): Promise<void> {
    try {
      await transactionOf(execution).rollback();
    } catch (error) {
      this.flow.logger.error(`${where(execution)}: rolling back failed: ${describeError(error)}`);
    } finally {
      execution.finish();
    }
  }

  lostConnection(execution: Execution, error: unknown): boolean {
    return transactionOf(execution).isLost(error);
  }
}

function transactionOf(execution: Execution): StoreTransaction {
  if (!execution.transaction) throw new Error('a transactional execution without its transaction');
  return execution.transaction;
}
