import type { OnApplicationShutdown } from '@nestjs/common';
import type { IdempotencyRecord, RecordIdentity } from '../core/record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  type ResponsePayload,
  type StoreTransaction,
} from './idempotency.store.js';

/**
 * Two stores behind one: lease-mode records in `lease` (Redis), transactional records in
 * `transactional` (PostgreSQL, where the handler's writes commit with them). A route's
 * mode is fixed by its decorator, so each identity always lives in the same one of them;
 * a route whose mode changes starts its keys afresh in the other store.
 *
 * Lease mode talks only to `lease` (claim, which also answers replays, renew, complete,
 * release, waiting); a transactional request opens `transactional`'s transaction. Only
 * `find()` cannot tell from an identity which store holds it: it reads `lease` first,
 * then `transactional`. The fingerprint secret is `transactional`'s, the durable one.
 */
export class SplitIdempotencyStore extends IdempotencyStore implements OnApplicationShutdown {
  constructor(
    readonly lease: IdempotencyStore,
    readonly transactional: IdempotencyStore,
  ) {
    super();
    if (!transactional.supportsTransactions) {
      throw new Error(`SplitIdempotencyStore: ${transactional.constructor.name} has no transactions.`);
    }
  }

  claim(request: ClaimRequest): Promise<ClaimResult> {
    return this.lease.claim(request);
  }

  complete(identity: RecordIdentity, ownerToken: string, response: ResponsePayload, ttlMs: number): Promise<boolean> {
    return this.lease.complete(identity, ownerToken, response, ttlMs);
  }

  release(identity: RecordIdentity, ownerToken: string): Promise<boolean> {
    return this.lease.release(identity, ownerToken);
  }

  renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean> {
    return this.lease.renew(identity, ownerToken, leaseMs);
  }

  override waitForChange(identity: RecordIdentity, pollMs: number, deadline: number): Promise<void> {
    return this.lease.waitForChange(identity, pollMs, deadline);
  }

  override openTransaction(deadline?: number): Promise<StoreTransaction> {
    return this.transactional.openTransaction(deadline);
  }

  async find(identity: RecordIdentity, deadline?: number): Promise<IdempotencyRecord | null> {
    return (await this.lease.find(identity, deadline)) ?? this.transactional.find(identity, deadline);
  }

  sharedSecret(): Promise<Buffer> {
    return this.transactional.sharedSecret();
  }

  async purgeExpired(options?: PurgeOptions): Promise<number> {
    return (await this.lease.purgeExpired(options)) + (await this.transactional.purgeExpired(options));
  }

  override async verify(): Promise<void> {
    await this.lease.verify();
    await this.transactional.verify();
  }

  async onApplicationShutdown(): Promise<void> {
    for (const store of [this.lease, this.transactional]) {
      await (store as Partial<OnApplicationShutdown>).onApplicationShutdown?.();
    }
  }
}
