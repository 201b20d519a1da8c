import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeError } from '../errors.js';
import { type ResponsePayload, UnstorableResponseError } from '../storage/idempotency.store.js';
import type { Execution, Outcome } from './execution.js';
import { type Attempt, type ExecutionMode, type Flow, where } from './flow.js';
import { runOutsideTransaction } from './idempotent-transaction.js';
import type { StoredResponse } from './record.js';
import { unreplayable } from './stored-response.js';

/** Longest pause between attempts to store a lease-mode response while the store is down. */
const MAX_COMPLETION_BACKOFF_MS = 5000;

/**
 * Lease mode: the claim commits at once and holds for a lease the running execution keeps
 * renewing; duplicates poll, since the owner holds no lock. The handler's writes are its
 * own: once it has run, its effect has happened, whatever becomes of the record.
 */
export class LeaseMode implements ExecutionMode {
  readonly claimAnswersReplays = true;
  private shuttingDown = false;
  /** Completions still being retried after the response was sent. */
  private readonly pendingCompletions = new Set<Promise<void>>();

  constructor(private readonly flow: Flow) {}

  async begin(attempt: Attempt): Promise<Outcome> {
    const { flow } = this;
    for (let round = 0; ; round++) {
      const request = flow.claimRequest(attempt);
      const claimedAt = performance.now();
      const claim = await flow.storeCall(() => flow.store.claim(request));
      if (claim.claimed) {
        const execution = flow.executionOf(attempt, request, claim, claimedAt);
        execution.startHeartbeat(() => this.renew(execution));
        return { kind: 'execute', execution };
      }
      const answer = await flow.answerOrWait(claim.observed, attempt, round);
      if (answer) return answer;
    }
  }

  /** Outside any transactional execution it is nested in: its writes are its own, as its record is. */
  runHandler<T>(_execution: Execution, handler: () => Promise<T>): Promise<T> {
    return runOutsideTransaction(handler);
  }

  /**
   * The handler's effect has happened, so its result is the truth for this caller, and it
   * is answered even if storing it fails; storing goes on in the background, with
   * back-off, for as long as the lease is held (the heartbeat keeps it), so an outage of
   * the store never lets a retry run the handler again while this process lives.
   */
  async complete(execution: Execution, response: StoredResponse): Promise<undefined> {
    const payload = this.flow.cipher.seal(execution.identity, response);
    const { status } = response;
    try {
      await this.completeOnce(execution, payload, status);
    } catch (error) {
      this.flow.logger.warn(
        `${where(execution)}: storing the response failed; retrying until it is stored: ${describeError(error)}`,
      );
      const retrying = this.keepCompleting(execution, payload, status).finally(() =>
        this.pendingCompletions.delete(retrying),
      );
      this.pendingCompletions.add(retrying);
    }
    return undefined;
  }

  async completeWithError(execution: Execution, response: StoredResponse, error: unknown): Promise<unknown> {
    await this.complete(execution, response);
    return error;
  }

  /** The effect has happened: retries get 410, never a second run. */
  async abandon(execution: Execution, status: number, reason: string): Promise<void> {
    await this.complete(execution, unreplayable(status, reason));
  }

  async release(execution: Execution): Promise<void> {
    try {
      await this.flow.store.release(execution.identity, execution.ownerToken);
    } catch (error) {
      this.flow.logger.error(
        `${where(execution)}: could not release the key; it is free again once its lease lapses: ${describeError(error)}`,
      );
    } finally {
      execution.finish();
    }
  }

  lostConnection(): boolean {
    // Each statement of lease mode is a transaction of its own: there is no connection to lose.
    return false;
  }

  /** Waits for completions still being retried while their lease is held. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    await Promise.allSettled(this.pendingCompletions);
  }

  private async completeOnce(execution: Execution, payload: ResponsePayload, status: number): Promise<void> {
    const { identity, ownerToken, options } = execution;
    const { store, cipher, logger } = this.flow;
    let completed: boolean;
    try {
      completed = await store.complete(identity, ownerToken, payload, options.ttlMs);
    } catch (error) {
      if (!(error instanceof UnstorableResponseError)) throw error;
      // Too large for the store after all: the effect happened, so retries get 410, never a second run.
      logger.warn(`${where(execution)}: ${error.message}; the key answers 410 from now on.`);
      const fallback = cipher.seal(identity, unreplayable(status, 'the response is too large for the store'));
      completed = await store.complete(identity, ownerToken, fallback, options.ttlMs);
    }
    execution.finish();
    if (!completed) {
      logger.warn(
        `${where(execution)}: the lease was lost before completion; another request took the key over, so this response was not stored.`,
      );
    }
  }

  /**
   * Retries storing a response until it is stored or fenced out. Storing late is always
   * safe: the owner token fences it out once another request has taken the key over
   * (possible only after the lease lapsed), and an expired record refuses it. Only the
   * application's shutdown ends it earlier, once the lease is no longer held.
   */
  private async keepCompleting(execution: Execution, payload: ResponsePayload, status: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      await sleep(Math.min(MAX_COMPLETION_BACKOFF_MS, 100 * 2 ** Math.min(attempt - 1, 6)));
      if (this.shuttingDown && !execution.leaseHeld) break;
      try {
        await this.completeOnce(execution, payload, status);
        this.flow.logger.log(`${where(execution)}: the response was stored after ${attempt + 1} attempts.`);
        return;
      } catch {
        // The store is still unreachable: try again.
      }
    }
    execution.finish();
    this.flow.logger.error(
      `${where(execution)}: the application stopped before the response could be stored; the key stays in ` +
        'progress until its lease lapses, and a retry after that runs the handler again.',
    );
  }

  private async renew(execution: Execution): Promise<boolean> {
    const { identity, ownerToken, options } = execution;
    try {
      const renewed = await this.flow.store.renew(identity, ownerToken, options.leaseMs);
      if (!renewed && !execution.finished) {
        execution.finish();
        this.flow.logger.warn(`${where(execution)}: the lease was lost while the handler ran.`);
      }
      return renewed;
    } catch (error) {
      // The next beat tries again; the lease is a third of the way from lapsing.
      if (!execution.finished) {
        this.flow.logger.warn(`${where(execution)}: lease renewal failed: ${describeError(error)}`);
      }
      return false;
    }
  }
}
