import type { Logger } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import {
  describeError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  RequestInProgressError,
} from '../errors.js';
import type { ResolvedRouteOptions } from '../idempotency.options.js';
import { performance } from 'node:perf_hooks';
import type { ClaimRequest, ClaimResult, IdempotencyStore, StoreTransaction } from '../storage/idempotency.store.js';
import { Execution, type Outcome } from './execution.js';
import {
  decideClaim,
  type IdempotencyRecord,
  type ObservedRecord,
  type RecordIdentity,
  type StoredResponse,
} from './record.js';
import type { ResponseCipher } from './response-cipher.js';

/** One claim attempt, before it is run or answered. */
export interface Attempt {
  identity: RecordIdentity;
  /** Under the current secret first, then under previous ones. */
  fingerprints: string[];
  options: ResolvedRouteOptions;
  /** When a duplicate stops waiting (`'wait'`), or now (`'reject'`). */
  waitUntil: number;
  /** When the attempt stops waiting for a pooled connection. */
  acquireBy: number;
  leave: () => void;
  /** Set by whatever makes the call wait for another call that holds its key (the `waited` event). */
  waiting: Waiting;
}

/** When (`performance.now()`) a call began waiting for another call that held its key; unset if it has not. */
export interface Waiting {
  since?: number;
}

/**
 * What differs between lease mode and transactional mode, each in a class of its own:
 * how a key is claimed, how the handler runs, and how its outcome is stored or undone.
 */
export interface ExecutionMode {
  /**
   * Whether the claim is itself one plain read when the record is completed (lease mode),
   * so that a replay costs no more through it than through a look-up first.
   */
  readonly claimAnswersReplays: boolean;
  /** Claims the key, or answers from the record someone else holds (waiting for it in `'wait'`). */
  begin(attempt: Attempt): Promise<Outcome>;
  /** Runs the handler of a won claim. */
  runHandler<T>(execution: Execution, handler: () => Promise<T>): Promise<T>;
  /** Stores the outcome; returns a stored response to answer with instead, when the handler's may not be the truth. */
  complete(execution: Execution, response: StoredResponse): Promise<StoredResponse | undefined>;
  /** Stores a handler error that is a final answer; returns what to throw. */
  completeWithError(execution: Execution, response: StoredResponse, error: unknown): Promise<unknown>;
  /** The result exists but cannot be stored (not serialisable): what a retry may do depends on whether the effect stays. */
  abandon(execution: Execution, status: number, reason: string): Promise<void>;
  /** Frees the key so that a retry runs again. */
  release(execution: Execution): Promise<void>;
  /** Whether `error` means the execution's connection to the store broke (its outcome unknown to the store). */
  lostConnection(execution: Execution, error: unknown): boolean;
}

/** What both modes share: the store, decisions on observed records, and the store-unavailable mapping. */
export class Flow {
  constructor(
    readonly store: IdempotencyStore,
    readonly cipher: ResponseCipher,
    readonly logger: Logger,
    private readonly retryAfterSeconds: number,
  ) {}

  /** Answers from a record someone else holds, or sleeps and returns nothing for another round. */
  async answerOrWait(observed: ObservedRecord, attempt: Attempt, round: number): Promise<Outcome | undefined> {
    const [fingerprint, ...previous] = attempt.fingerprints;
    const decision = decideClaim(observed, fingerprint, previous);
    if (decision === 'mismatch') throw new IdempotencyKeyReuseError();
    if (decision === 'replay') return { kind: 'replay', response: this.open(observed.record) };
    const remaining = attempt.waitUntil - Date.now();
    if (remaining <= 0) throw new RequestInProgressError(attempt.options.retryAfterSeconds);
    attempt.waiting.since ??= performance.now();
    await this.store.waitForChange(attempt.identity, Math.min(remaining, backoff(round)), attempt.waitUntil);
    return undefined;
  }

  claimRequest({ identity, fingerprints: [fingerprint, ...previous], options, acquireBy }: Attempt): ClaimRequest {
    return {
      identity,
      fingerprint,
      acceptedFingerprints: previous,
      ownerToken: randomUUID(),
      leaseMs: options.leaseMs,
      ttlMs: options.ttlMs,
      deadline: acquireBy,
    };
  }

  /** The execution of a won claim; its fingerprint is the record's, which a take-over keeps. */
  executionOf(
    { identity, options, leave }: Attempt,
    request: ClaimRequest,
    { record, takenOver }: Extract<ClaimResult, { claimed: true }>,
    claimedAt: number,
    transaction?: StoreTransaction,
  ): Execution {
    const { ownerToken } = request;
    return new Execution(
      identity,
      ownerToken,
      record.fingerprint,
      options,
      leave,
      claimedAt,
      transaction,
      takenOver === true,
    );
  }

  /** The stored response of a completed record; 503 when it cannot be decrypted (a key missing from the options). */
  open(record: IdempotencyRecord): StoredResponse {
    try {
      return this.cipher.open(record, record.response!);
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  async storeCall<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  unavailable(error: unknown): IdempotencyStoreUnavailableError {
    if (error instanceof IdempotencyStoreUnavailableError) return error;
    this.logger.error(`idempotency store unavailable: ${describeError(error)}`);
    return new IdempotencyStoreUnavailableError(this.retryAfterSeconds);
  }
}

/** 20 ms doubling to 250 ms, with jitter so that waiters do not poll in lock-step. */
function backoff(attempt: number): number {
  const base = Math.min(250, 20 * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

/** Where an execution runs, for log lines. */
export function where({ identity }: Execution): string {
  return `${identity.method} ${identity.route}`;
}
