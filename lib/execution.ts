import type { ResolvedRouteOptions } from './idempotency.options.js';
import type { RecordIdentity, StoredResponse } from './record.js';
import type { StoreTransaction } from './storage/idempotency.store.js';

/** A claimed record that this request now runs the handler for. */
export class Execution {
  private heartbeat?: NodeJS.Timeout;
  /** Set once the record is completed or released: later renewals are moot. */
  finished = false;

  constructor(
    readonly identity: RecordIdentity,
    readonly ownerToken: string,
    readonly options: ResolvedRouteOptions,
    /** Lets the next queued duplicate in (see KeyQueue). */
    private readonly leave: () => void,
    /** Transactional mode: the transaction the claim, the handler and the completion share. */
    readonly transaction?: StoreTransaction,
  ) {}

  /**
   * @internal Renews the lease every third of it until the record is completed or
   * released, so that a live process loses it only if it cannot reach the store for a
   * whole lease.
   */
  startHeartbeat(renew: () => Promise<void>): void {
    this.heartbeat = setInterval(() => void renew(), Math.max(1, Math.floor(this.options.leaseMs / 3)));
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
  /** No key on a route where it is optional: the request passes through untouched. */
  | { kind: 'bypass' }
  /** A completed record: answer with its stored response; the handler does not run. */
  | { kind: 'replay'; response: StoredResponse }
  /** This request owns the key: run the handler, then complete or release. */
  | { kind: 'execute'; execution: Execution };
