import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  describeError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  RequestInProgressError,
} from '../errors.js';
import { Execution, type Outcome } from './execution.js';
import { Fingerprinter, type FingerprintParts } from './fingerprint.js';
import { KeyQueue } from './key-queue.js';
import { MODULE_OPTIONS_TOKEN } from '../idempotency.module-definition.js';
import {
  type IdempotencyModuleOptions,
  type ResolvedRouteOptions,
  validateModuleOptions,
} from '../idempotency.options.js';
import {
  decideClaim,
  type IdempotencyRecord,
  type ObservedRecord,
  type RecordIdentity,
  type StoredResponse,
} from './record.js';
import { ResponseCipher } from './response-cipher.js';
import {
  type ClaimRequest,
  IdempotencyStore,
  type PurgeOptions,
  type ResponsePayload,
  type StoreTransaction,
  UnstorableResponseError,
} from '../storage/idempotency.store.js';
import { unreplayable } from './stored-response.js';

/** One request's claim attempt, before it is run or answered. */
interface Attempt {
  identity: RecordIdentity;
  /** Under the current secret first, then under previous ones. */
  fingerprints: string[];
  options: ResolvedRouteOptions;
  /** When a duplicate stops waiting (`'wait'`), or now (`'reject'`). */
  waitUntil: number;
  /** When the request stops waiting for a pooled connection. */
  acquireBy: number;
  leave: () => void;
}

/** PostgreSQL's lock_not_available: a lock_timeout ran out. */
const LOCK_TIMEOUT = '55P03';

/** Scopes longer than this are stored as their SHA-256, so that they fit the primary key's index entry. */
const MAX_STORED_SCOPE_BYTES = 256;
const HASHED_SCOPE = 'sha256:';

/** Longest pause between attempts to store a lease-mode response while the store is down. */
const MAX_COMPLETION_BACKOFF_MS = 5000;

/**
 * The idempotency flow: claim, wait, replay, complete, release; plus purge and look-up.
 * It knows nothing of HTTP: the interceptor maps requests onto it and outcomes to replies.
 */
@Injectable()
export class IdempotencyService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('Idempotency');
  private readonly queue = new KeyQueue();
  private readonly cipher: ResponseCipher;
  private fingerprinter?: Fingerprinter;
  private purgeTimer?: NodeJS.Timeout;
  private purging = false;
  private shuttingDown = false;
  /** Lease-mode completions still being retried after the response was sent. */
  private readonly pendingCompletions = new Set<Promise<void>>();

  constructor(
    private readonly store: IdempotencyStore,
    @Inject(MODULE_OPTIONS_TOKEN) private readonly moduleOptions: IdempotencyModuleOptions,
  ) {
    validateModuleOptions(moduleOptions);
    this.cipher = new ResponseCipher(moduleOptions.encryptionKeys);
  }

  async onModuleInit(): Promise<void> {
    await this.store.verify();
    const given = this.moduleOptions.fingerprintSecret;
    const [current, ...previous] = given === undefined ? [await this.store.sharedSecret()] : [given].flat();
    this.fingerprinter = new Fingerprinter(current, previous);
    const interval = this.moduleOptions.purgeIntervalMs;
    if (interval) {
      this.purgeTimer = setInterval(() => void this.purgeInBackground(), interval);
      this.purgeTimer.unref();
    }
  }

  async onApplicationShutdown(): Promise<void> {
    this.shuttingDown = true;
    clearInterval(this.purgeTimer);
    await Promise.allSettled(this.pendingCompletions);
  }

  /**
   * Decides what a request gets: claims the record, waits for it (`concurrency: 'wait'`),
   * or finds it completed. Throws 409, 422 or 503 problems.
   */
  async begin(options: ResolvedRouteOptions, identity: RecordIdentity, parts: FingerprintParts): Promise<Outcome> {
    identity = { ...identity, scope: storedScope(identity.scope) };
    const fingerprints = this.fingerprinter!.of(parts);
    const now = Date.now();
    const waiting = options.concurrency === 'wait';
    const waitUntil = now + (waiting ? options.waitTimeoutMs : 0);
    const acquireBy = now + options.waitTimeoutMs;
    const leave = waiting
      ? await this.queue.enter(JSON.stringify(identity), waitUntil, options.retryAfterSeconds)
      : () => {};
    const attempt: Attempt = { identity, fingerprints, options, waitUntil, acquireBy, leave };
    try {
      const outcome =
        (await this.answerFromCompleted(attempt)) ??
        (options.transactional ? await this.beginInTransaction(attempt) : await this.beginWithLease(attempt));
      if (outcome.kind !== 'execute') leave();
      return outcome;
    } catch (error) {
      leave();
      throw error;
    }
  }

  /**
   * Replays (and 422s) first, with one plain indexed read: a completed record needs no
   * claim statement and no transaction, and holds no pooled connection beyond the query,
   * which matters most in a retry storm. A first execution pays it as one extra read.
   */
  private async answerFromCompleted(attempt: Attempt): Promise<Outcome | undefined> {
    const existing = await this.storeCall(() => this.store.find(attempt.identity, attempt.acquireBy));
    if (existing?.status !== 'completed') return undefined;
    return this.answerOrWait({ record: existing, expired: false, leaseLapsed: false }, attempt, 0);
  }

  /** Lease mode: the claim commits at once; duplicates poll, as the owner holds no lock. */
  private async beginWithLease(attempt: Attempt): Promise<Outcome> {
    for (let round = 0; ; round++) {
      const request = this.claimRequest(attempt);
      const claimedAt = performance.now();
      const claim = await this.storeCall(() => this.store.claim(request));
      if (claim.claimed) {
        const execution = this.executionOf(attempt, request, claim.record, claimedAt);
        execution.startHeartbeat(() => this.renew(execution));
        return { kind: 'execute', execution };
      }
      const answer = await this.answerOrWait(claim.observed, attempt, round);
      if (answer) return answer;
    }
  }

  /**
   * Transactional mode: the claim stays uncommitted until the handler's writes and the
   * response commit with it. A duplicate's claim waits on that uncommitted row, inside
   * PostgreSQL, until the owner commits (then it replays) or rolls back (then it owns the
   * key), for at most the time it may wait.
   */
  private async beginInTransaction(attempt: Attempt): Promise<Outcome> {
    for (let round = 0; ; round++) {
      const request = this.claimRequest(attempt);
      const transaction = await this.storeCall(() => this.store.openTransaction(attempt.acquireBy));
      const claimedAt = performance.now();
      let observed: ObservedRecord;
      try {
        // 'reject': waitUntil is now, so the claim waits 1 ms at most for another owner.
        const claim = await transaction.claim(request, attempt.waitUntil);
        if (claim.claimed) {
          await transaction.beginHandler(attempt.options.leaseMs);
          return {
            kind: 'execute',
            execution: this.executionOf(attempt, request, claim.record, claimedAt, transaction),
          };
        }
        observed = claim.observed;
      } catch (error) {
        await transaction.rollback();
        if ((error as { code?: string }).code === LOCK_TIMEOUT) {
          throw new RequestInProgressError(attempt.options.retryAfterSeconds);
        }
        throw this.unavailable(error);
      }
      await transaction.rollback();
      // Only a lease-mode record (the route's mode changed) can be seen in progress here.
      const answer = await this.answerOrWait(observed, attempt, round);
      if (answer) return answer;
    }
  }

  /** Answers from a record someone else holds, or sleeps and returns nothing for another round. */
  private async answerOrWait(observed: ObservedRecord, attempt: Attempt, round: number): Promise<Outcome | undefined> {
    const [fingerprint, ...previous] = attempt.fingerprints;
    const decision = decideClaim(observed, fingerprint, previous);
    if (decision === 'mismatch') throw new IdempotencyKeyReuseError();
    if (decision === 'replay') return { kind: 'replay', response: this.open(observed.record) };
    const remaining = attempt.waitUntil - Date.now();
    if (remaining <= 0) throw new RequestInProgressError(attempt.options.retryAfterSeconds);
    await sleep(Math.min(remaining, backoff(round)));
    return undefined;
  }

  /**
   * Stores the response of a finished execution. Returns a stored response to answer with
   * instead of the handler's, in the one case where the handler's may not be the truth.
   *
   * Lease mode: the handler's effect has happened, so its response is the truth for this
   * client, and it is sent even if storing it fails; storing goes on in the background,
   * with back-off, for as long as the lease is held (the heartbeat keeps it), so a
   * database outage shorter than the lease never lets a retry run the handler again.
   *
   * Transactional mode: the response commits with the handler's writes. If the commit
   * fails, neither happened, and the client gets 503 (so it retries; nothing is left
   * claimed), unless the record turns out to be completed after all (the connection broke
   * after PostgreSQL committed): then the stored response is the answer.
   */
  async complete(execution: Execution, response: StoredResponse): Promise<StoredResponse | undefined> {
    const payload = this.cipher.seal(execution.identity, response);
    if (execution.transaction) return this.commit(execution, execution.transaction, payload);
    try {
      await this.completeOnce(execution, payload, response.status);
    } catch (error) {
      this.logger.warn(
        `${where(execution)}: storing the response failed; retrying until it is stored: ${describeError(error)}`,
      );
      const retrying = this.keepCompleting(execution, payload, response.status).finally(() =>
        this.pendingCompletions.delete(retrying),
      );
      this.pendingCompletions.add(retrying);
    }
    return undefined;
  }

  /**
   * The handler failed with `error`. Stores what `capture` makes of it (a final answer,
   * e.g. a 4xx), or releases the key so that a retry runs again. Returns the error to
   * throw: the handler's own, or 503 when the transaction's connection broke under it.
   */
  async fail(execution: Execution, error: unknown, capture: () => StoredResponse | undefined): Promise<unknown> {
    if (execution.transaction?.isLost(error)) {
      await this.release(execution);
      return this.unavailable(error);
    }
    let stored: StoredResponse | undefined;
    try {
      stored = capture();
    } catch (policyError) {
      // The error policy (or the capture) threw: the handler's error is still the answer, and nothing is stored.
      this.logger.error(
        `${where(execution)}: deciding whether to store the handler's error failed: ${describeError(policyError)}`,
      );
    }
    if (!stored) {
      await this.release(execution);
      return error;
    }
    const { transaction } = execution;
    if (!transaction) {
      await this.complete(execution, stored);
      return error;
    }
    try {
      // The error is the answer, so the handler's writes are undone; the claim stays.
      await transaction.discardHandlerWrites();
    } catch (discardError) {
      await this.release(execution);
      return this.unavailable(discardError);
    }
    try {
      await this.commit(execution, transaction, this.cipher.seal(execution.identity, stored));
    } catch (commitError) {
      return commitError;
    }
    return error;
  }

  /** Frees the key of a failed execution so that a retry runs the handler again. */
  async release(execution: Execution): Promise<void> {
    try {
      if (execution.transaction) await execution.transaction.rollback();
      else await this.store.release(execution.identity, execution.ownerToken);
    } catch (error) {
      this.logger.error(
        `${where(execution)}: could not release the key; it is free again once its lease lapses: ${describeError(error)}`,
      );
    } finally {
      execution.finish();
    }
  }

  /** The live record of an identity (null when absent or expired), e.g. for support tooling. */
  async find(identity: RecordIdentity): Promise<IdempotencyRecord | null> {
    const scoped = { ...identity, scope: storedScope(identity.scope) };
    const record = await this.store.find(scoped);
    return record?.response ? { ...record, response: this.cipher.open(scoped, record.response) } : record;
  }

  /** Deletes expired records in bounded batches; returns how many were deleted. */
  purgeExpired(options?: PurgeOptions): Promise<number> {
    return this.store.purgeExpired(options);
  }

  private async completeOnce(execution: Execution, payload: ResponsePayload, status: number): Promise<void> {
    const { identity, ownerToken, options } = execution;
    let completed: boolean;
    try {
      completed = await this.store.complete(identity, ownerToken, payload, options.ttlMs);
    } catch (error) {
      if (!(error instanceof UnstorableResponseError)) throw error;
      // Too large for the store after all: the effect happened, so retries get 410, never a second run.
      this.logger.warn(`${where(execution)}: ${error.message}; the key answers 410 from now on.`);
      const fallback = this.cipher.seal(identity, unreplayable(status, 'the response is too large for the store'));
      completed = await this.store.complete(identity, ownerToken, fallback, options.ttlMs);
    }
    execution.finish();
    if (!completed) {
      this.logger.warn(
        `${where(execution)}: the lease was lost before completion; another request took the key over, so this response was not stored.`,
      );
    }
  }

  /**
   * Retries storing a lease-mode response until it is stored or fenced out. Storing late is
   * always safe: the owner token fences it out once another request has taken the key over
   * (possible only after the lease lapsed), and an expired record refuses it. Only the
   * application's shutdown ends it earlier, once the lease is no longer held.
   */
  private async keepCompleting(execution: Execution, payload: ResponsePayload, status: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      await sleep(Math.min(MAX_COMPLETION_BACKOFF_MS, 100 * 2 ** Math.min(attempt - 1, 6)));
      if (this.shuttingDown && !execution.leaseHeld) break;
      try {
        await this.completeOnce(execution, payload, status);
        this.logger.log(`${where(execution)}: the response was stored after ${attempt + 1} attempts.`);
        return;
      } catch {
        // The store is still unreachable: try again.
      }
    }
    execution.finish();
    this.logger.error(
      `${where(execution)}: the application stopped before the response could be stored; the key stays in ` +
        'progress until its lease lapses, and a retry after that runs the handler again.',
    );
  }

  private async commit(
    execution: Execution,
    transaction: StoreTransaction,
    payload: ResponsePayload,
  ): Promise<StoredResponse | undefined> {
    const { identity, ownerToken, options } = execution;
    try {
      if (!(await transaction.complete(identity, ownerToken, payload, options.ttlMs))) {
        throw new Error('the claimed record was not found in its own transaction');
      }
      await transaction.commit();
      return undefined;
    } catch (error) {
      await transaction.rollback();
      // Committed after all? Then the stored response is this request's (or an equal one's) answer.
      const stored = await this.store.find(identity, Date.now() + options.waitTimeoutMs).catch(() => null);
      if (stored?.status === 'completed' && stored.fingerprint === execution.fingerprint) return this.open(stored);
      throw this.unavailable(error);
    } finally {
      execution.finish();
    }
  }

  /** The execution of a won claim; its fingerprint is the record's, which a take-over keeps. */
  private executionOf(
    { identity, options, leave }: Attempt,
    request: ClaimRequest,
    record: IdempotencyRecord,
    claimedAt: number,
    transaction?: StoreTransaction,
  ): Execution {
    return new Execution(identity, request.ownerToken, record.fingerprint, options, leave, claimedAt, transaction);
  }

  private claimRequest({
    identity,
    fingerprints: [fingerprint, ...previous],
    options,
    acquireBy,
  }: Attempt): ClaimRequest {
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

  /** The stored response of a completed record; 503 when it cannot be decrypted (a key missing from the options). */
  private open(record: IdempotencyRecord): StoredResponse {
    try {
      return this.cipher.open(record, record.response!);
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  private async renew(execution: Execution): Promise<boolean> {
    const { identity, ownerToken, options } = execution;
    try {
      const renewed = await this.store.renew(identity, ownerToken, options.leaseMs);
      if (!renewed && !execution.finished) {
        execution.finish();
        this.logger.warn(`${where(execution)}: the lease was lost while the handler ran.`);
      }
      return renewed;
    } catch (error) {
      // The next beat tries again; the lease is a third of the way from lapsing.
      if (!execution.finished) this.logger.warn(`${where(execution)}: lease renewal failed: ${describeError(error)}`);
      return false;
    }
  }

  private async storeCall<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  private unavailable(error: unknown): IdempotencyStoreUnavailableError {
    if (error instanceof IdempotencyStoreUnavailableError) return error;
    this.logger.error(`idempotency store unavailable: ${describeError(error)}`);
    return new IdempotencyStoreUnavailableError(this.moduleOptions.retryAfterSeconds ?? 1);
  }

  /** Timer-driven purges never overlap: a slow one makes the next tick skip. */
  private async purgeInBackground(): Promise<void> {
    if (this.purging) return;
    this.purging = true;
    try {
      const deleted = await this.purgeExpired();
      if (deleted > 0) this.logger.log(`purged ${deleted} expired idempotency records`);
    } catch (error) {
      this.logger.warn(`purge of expired records failed: ${describeError(error)}`);
    } finally {
      this.purging = false;
    }
  }
}

/**
 * The scope as stored: long ones (a 3000-character subject) as their SHA-256, since the
 * record's identity is a primary key whose index entries have a size limit. A scope that
 * already looks like such a hash is hashed too, so that no caller can pick a scope equal to
 * another caller's stored hash.
 */
export function storedScope(scope: string): string {
  if (Buffer.byteLength(scope, 'utf8') <= MAX_STORED_SCOPE_BYTES && !scope.startsWith(HASHED_SCOPE)) return scope;
  return HASHED_SCOPE + createHash('sha256').update(scope, 'utf8').digest('hex');
}

/** 20 ms doubling to 250 ms, with jitter so that waiters do not poll in lock-step. */
function backoff(attempt: number): number {
  const base = Math.min(250, 20 * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

function where({ identity }: Execution): string {
  return `${identity.method} ${identity.route}`;
}
