import { setTimeout as sleep } from 'node:timers/promises';
import type {
  IdempotencyRecord,
  ObservedRecord,
  RecordIdentity,
  RecordStatus,
  SealedResponse,
  StoredResponse,
} from '../core/record.js';

/** What `complete()` stores: the response, encrypted when the module has encryption keys. */
export type ResponsePayload = StoredResponse | SealedResponse;

/**
 * Thrown by `complete()` when the store can never hold this response (too large for it),
 * as opposed to being unreachable: retrying would not help.
 */
export class UnstorableResponseError extends Error {
  constructor(reason: string) {
    super(`the response cannot be stored: ${reason}`);
  }
}

export interface ClaimRequest {
  readonly identity: RecordIdentity;
  readonly fingerprint: string;
  /** The same request's fingerprints under previous secrets: a record holding one of them is this request too. */
  readonly acceptedFingerprints?: readonly string[];
  /** Fresh random UUID of the claiming request: its fencing token if it wins. */
  readonly ownerToken: string;
  /** How long the claim holds without renewal before another request may take over. */
  readonly leaseMs: number;
  /** Lifetime of the record; renewed from the moment it completes. */
  readonly ttlMs: number;
  /**
   * Epoch ms after which the store gives up acquiring a connection for this claim (and
   * throws), rather than queue behind a busy pool for ever.
   */
  readonly deadline?: number;
}

export type ClaimResult =
  /** The caller now owns the record (new, re-claimed after expiry, or taken over). */
  | { readonly claimed: true; readonly record: IdempotencyRecord }
  /** A live record holds the key; the caller decides with `decideClaim()` what to answer. */
  | { readonly claimed: false; readonly observed: ObservedRecord };

export interface PurgeOptions {
  /** Rows deleted per statement: bounds lock time and WAL per batch. Default 1000. */
  readonly batchSize?: number;
  /** Stop after this many batches (for a purge job with a time budget). Default: until none is left. */
  readonly maxBatches?: number;
  /**
   * Pause between batches, in ms, so that live requests get the database between them
   * (measured: back-to-back batches of 1000 rows raised live latency to ~0.3 s on two
   * cores). Default 10.
   */
  readonly pauseMs?: number;
}

/** Purge options with their defaults, checked: a batch of 0 rows would never finish. */
export function purgeLimits({
  batchSize = 1000,
  maxBatches = Infinity,
  pauseMs = 10,
}: PurgeOptions): Required<PurgeOptions> {
  if (!Number.isInteger(batchSize) || batchSize < 1)
    throw new RangeError('purgeExpired: batchSize must be a positive integer');
  if (!(maxBatches >= 1)) throw new RangeError('purgeExpired: maxBatches must be at least 1');
  if (!(pauseMs >= 0)) throw new RangeError('purgeExpired: pauseMs must not be negative');
  return { batchSize, maxBatches, pauseMs };
}

/**
 * Where idempotency records live. This abstract class is both the type and the
 * injection token: provide another implementation with `{ provide: IdempotencyStore, useClass }`
 * or the module's `store` option.
 *
 * Every store must guarantee:
 * - **Atomic claim.** Of any number of concurrent `claim()` calls for one identity, on
 *   any number of processes, at most one returns `claimed: true` while the record is live.
 *   Take-over of a lapsed lease and re-claim of an expired record are atomic too.
 * - **Fencing.** `complete`, `release` and `renew` change a record only while it is live,
 *   `in_progress` and owned by the given token (a UUID); otherwise they change nothing and
 *   return false.
 * - **Expiry.** A record whose `expiresAt` has passed behaves as absent for every operation.
 * - **Time from one clock.** Leases and expiry are compared against the store's clock,
 *   never against the clocks of app instances.
 * - The transitions of `record.ts` and no others.
 */
export abstract class IdempotencyStore {
  /** Claims the identity, or returns the live record that holds it. */
  abstract claim(request: ClaimRequest): Promise<ClaimResult>;

  /** Moves an owned record to `completed` with its response; false if fenced out. */
  abstract complete(
    identity: RecordIdentity,
    ownerToken: string,
    response: ResponsePayload,
    ttlMs: number,
  ): Promise<boolean>;

  /** Deletes an owned in-flight record so that the key is free again; false if fenced out. */
  abstract release(identity: RecordIdentity, ownerToken: string): Promise<boolean>;

  /** Extends the lease of an owned in-flight record; false if the lease was lost. */
  abstract renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean>;

  /** The live record of an identity, or null when absent or expired; `deadline` bounds waiting for a connection. */
  abstract find(identity: RecordIdentity, deadline?: number): Promise<IdempotencyRecord | null>;

  /**
   * The secret that fingerprints are MACed with when the application gives none: created
   * once, at random, and the same for every instance that shares this store, across restarts.
   */
  abstract sharedSecret(): Promise<Buffer>;

  /** Deletes expired records in batches; returns how many were deleted. */
  abstract purgeExpired(options?: PurgeOptions): Promise<number>;

  /**
   * Operator action: deletes the identity's in-progress record whatever its owner token (its
   * owner is gone), so that the next request runs again; false when there is no
   * in-progress record. A completed record is left alone.
   */
  releaseRecord(_identity: RecordIdentity): Promise<boolean> {
    return Promise.reject(new Error(`${this.constructor.name} does not support releasing records`));
  }

  /**
   * Operator action: deletes the identity's record whatever its state, a completed one
   * before it expires included; the status it had, or null when there was none.
   */
  deleteRecord(_identity: RecordIdentity): Promise<RecordStatus | null> {
    return Promise.reject(new Error(`${this.constructor.name} does not support deleting records`));
  }

  /**
   * How a duplicate waits (`concurrency: 'wait'`) before it reads the record again: until
   * the record of `identity` may have changed, `pollMs` (the caller's back-off) or
   * `deadline` (epoch ms) at the latest. The default sleeps `pollMs`; a store that can
   * notify changes (Redis pub/sub) wakes its waiters as soon as the record completes.
   */
  waitForChange(_identity: RecordIdentity, pollMs: number, _deadline: number): Promise<void> {
    return sleep(pollMs);
  }

  /** Checks at start-up that the store is usable; throws with a message that names the fix. */
  async verify(): Promise<void> {}

  /** Whether `openTransaction()` is supported (transactional routes need it). */
  get supportsTransactions(): boolean {
    return this.openTransaction !== IdempotencyStore.prototype.openTransaction;
  }

  /**
   * Opens a database transaction for a transactional-mode request. Stores that keep
   * records outside the application's database cannot offer one.
   */
  openTransaction(_deadline?: number): Promise<StoreTransaction> {
    return Promise.reject(new Error(`${this.constructor.name} does not support transactional routes`));
  }
}

/**
 * A transactional-mode request's transaction. The record is claimed inside it, the
 * handler's writes go through `manager` or `client`, and the stored response commits with them.
 * A concurrent claim of the same identity waits on the database's lock (up to the
 * given lock timeout), not on polling; if the process dies, the database rolls back.
 */
export interface StoreTransaction {
  /**
   * The handler's view of the transaction: a TypeORM EntityManager for PostgreSQL on a
   * DataSource; undefined where the store has none (PostgreSQL on a `pg` Pool).
   */
  readonly manager: unknown;
  /** The transaction's connection as the handler may use it: a node-postgres client for PostgreSQL. */
  readonly client: unknown;
  /**
   * Claims inside the transaction, waiting for another owner until `waitUntil` (epoch ms)
   * at most. A won claim has also marked where the handler's writes start (the claim stays
   * if they are discarded), and lets the transaction sit idle between the handler's
   * statements for `idleLimitMs` at most: that bounds how long the key of a host that
   * vanished stays blocked.
   */
  claim(request: ClaimRequest, waitUntil: number, idleLimitMs: number): Promise<ClaimResult>;
  /** Discards the handler's writes, keeping the claim (a stored 4xx error). */
  discardHandlerWrites(): Promise<void>;
  /**
   * Whether the connection broke while the transaction was open (the database rolled it
   * back); `cause`, an error the handler threw, may tell it before the connection does.
   */
  isLost(cause?: unknown): boolean;
  /**
   * Completes the owned record with `response` and commits it with the handler's writes,
   * together or not at all; throws if it could not.
   */
  commit(identity: RecordIdentity, ownerToken: string, response: ResponsePayload, ttlMs: number): Promise<void>;
  /** Rolls everything back, the claim included; never throws, and is a no-op once settled. */
  rollback(): Promise<void>;
}
