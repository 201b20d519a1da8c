import { performance } from 'node:perf_hooks';
import type { ResolvedRouteOptions } from '../idempotency.options.js';
import type { RecordIdentity, StoredResponse } from './record.js';
import type { StoreTransaction } from '../storage/idempotency.store.js';

/** A claimed record that this request now runs the handler for. */
export class Execution {
  private heartbeat?: NodeJS.Timeout;
  /** Set once the record is completed or released: later renewals are moot. */
  finished = false;
  /**
   * Until when (on this process's monotonic clock) the lease is certainly still ours: the
   * moment the last successful claim or renewal was sent, plus the lease. The store's
   * clock started the lease later than that, so this errs on the safe side.
   */
  leaseHeldUntil: number;

  constructor(
    readonly identity: RecordIdentity,
    readonly ownerToken: string,
    /** The fingerprint the record was claimed with. */
    readonly fingerprint: string,
    readonly options: ResolvedRouteOptions,
    /** Lets the next queued duplicate in (see KeyQueue). */
    private readonly leave: () => void,
    /** When the claim was sent (`performance.now()`). */
    claimedAt: number,
    /** Transactional mode: the transaction the claim, the handler and the completion share. */
    readonly transaction?: StoreTransaction,
    /** The claim took the key over from an owner whose lease had lapsed (see `ClaimResult`). */
    readonly takenOver = false,
  ) {
    this.leaseHeldUntil = claimedAt + options.leaseMs;
  }

  get leaseHeld(): boolean {
    return performance.now() < this.leaseHeldUntil;
  }

  /**
   * @internal Renews the lease every third of it until the record is completed or
   * released, so that a live process loses it only if it cannot reach the store for a
   * whole lease.
   */
  startHeartbeat(renew: () => Promise<boolean>): void {
    let renewing = false;
    const beat = async () => {
      // A renewal still waiting (a busy pool, a slow store) is not stacked with another.
      if (renewing) return;
      renewing = true;
      const sentAt = performance.now();
      try {
        if (await renew()) this.leaseHeldUntil = sentAt + this.options.leaseMs;
      } finally {
        renewing = false;
      }
    };
    this.heartbeat = setInterval(() => void beat(), Math.floor(this.options.leaseMs / 3));
    this.heartbeat.unref();
  }

  /** @internal */
  finish(): void {
    if (this.finished) return;
    this.finished = true;
    clearInterval(this.heartbeat);
    this.leave();
  }
}

/** What to do with a request on an idempotent route. */
export type Outcome =
  /** A completed record: answer with its stored response; the handler does not run. */
  | { kind: 'replay'; response: StoredResponse }
  /** This request owns the key: run the handler, then complete or release. */
  | { kind: 'execute'; execution: Execution };
