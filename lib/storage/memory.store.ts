import { randomBytes } from 'node:crypto';
import {
  type ClaimDecision,
  decideClaim,
  type IdempotencyRecord,
  type ObservedRecord,
  type RecordIdentity,
  type RecordStatus,
} from '../core/record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  purgeLimits,
  type ResponsePayload,
} from './idempotency.store.js';

/**
 * An in-process store for an application's own unit tests: no database, same contract
 * as the PostgreSQL store (the shared contract suite runs against both). It is not for
 * production: records are not shared between processes and vanish on restart.
 *
 * Expired records are swept every `sweepEvery` writes, so it cannot grow without bound.
 */
export class MemoryIdempotencyStore extends IdempotencyStore {
  private readonly records = new Map<string, IdempotencyRecord>();
  private writes = 0;
  /** Per process, like the records it protects. */
  private readonly secret = randomBytes(32);

  constructor(
    private readonly now: () => number = Date.now,
    private readonly sweepEvery = 1000,
  ) {
    super();
  }

  async claim(request: ClaimRequest): Promise<ClaimResult> {
    this.sweepNowAndThen();
    const id = keyOf(request.identity);
    const existing = this.records.get(id);
    let decision: ClaimDecision | undefined;
    if (existing) {
      const observed = this.observe(existing);
      decision = decideClaim(observed, request.fingerprint, request.acceptedFingerprints);
      if (decision !== 'reclaim' && decision !== 'take-over') return { claimed: false, observed };
    }
    const now = this.now();
    const record: IdempotencyRecord = {
      ...request.identity,
      status: 'in_progress',
      // A take-over is the same request: its fingerprint may be under a previous secret.
      fingerprint: decision === 'take-over' ? existing!.fingerprint : request.fingerprint,
      ownerToken: request.ownerToken,
      lockedUntil: new Date(now + request.leaseMs),
      response: null,
      createdAt: new Date(now),
      completedAt: null,
      expiresAt: new Date(now + request.ttlMs),
    };
    this.records.set(id, record);
    return decision === 'take-over' ? { claimed: true, record, takenOver: true } : { claimed: true, record };
  }

  async sharedSecret(): Promise<Buffer> {
    return this.secret;
  }

  async complete(
    identity: RecordIdentity,
    ownerToken: string,
    response: ResponsePayload,
    ttlMs: number,
  ): Promise<boolean> {
    const record = this.owned(identity, ownerToken);
    if (!record) return false;
    const now = this.now();
    this.records.set(keyOf(identity), {
      ...record,
      status: 'completed',
      ownerToken: null,
      lockedUntil: null,
      // A copy, as a database would keep: later changes to the object do not leak in.
      response: structuredClone(response),
      completedAt: new Date(now),
      expiresAt: new Date(now + ttlMs),
    });
    return true;
  }

  async release(identity: RecordIdentity, ownerToken: string): Promise<boolean> {
    if (!this.owned(identity, ownerToken)) return false;
    this.records.delete(keyOf(identity));
    return true;
  }

  async renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean> {
    const record = this.owned(identity, ownerToken);
    if (!record) return false;
    this.records.set(keyOf(identity), { ...record, lockedUntil: new Date(this.now() + leaseMs) });
    return true;
  }

  override async releaseRecord(identity: RecordIdentity): Promise<boolean> {
    const record = await this.find(identity);
    return record?.status === 'in_progress' && this.records.delete(keyOf(identity));
  }

  override async deleteRecord(identity: RecordIdentity): Promise<RecordStatus | null> {
    const record = await this.find(identity);
    if (record) this.records.delete(keyOf(identity));
    return record?.status ?? null;
  }

  async find(identity: RecordIdentity): Promise<IdempotencyRecord | null> {
    const record = this.records.get(keyOf(identity));
    return record && !this.observe(record).expired ? record : null;
  }

  async purgeExpired(options: PurgeOptions = {}): Promise<number> {
    const { batchSize, maxBatches } = purgeLimits(options);
    let deleted = 0;
    const limit = maxBatches * batchSize;
    for (const [id, record] of this.records) {
      if (deleted >= limit) break;
      if (this.observe(record).expired) {
        this.records.delete(id);
        deleted++;
      }
    }
    return deleted;
  }

  /** Number of records held, expired ones included (for tests of the sweep). */
  get size(): number {
    return this.records.size;
  }

  private observe(record: IdempotencyRecord): ObservedRecord {
    const now = this.now();
    const leaseLive = record.status === 'in_progress' && record.lockedUntil!.getTime() > now;
    return {
      record,
      expired: record.expiresAt.getTime() <= now && !leaseLive,
      leaseLapsed: record.status === 'in_progress' && !leaseLive,
    };
  }

  private owned(identity: RecordIdentity, ownerToken: string): IdempotencyRecord | undefined {
    const record = this.records.get(keyOf(identity));
    const live = record?.status === 'in_progress' && record.ownerToken === ownerToken && !this.observe(record).expired;
    return live ? record : undefined;
  }

  private sweepNowAndThen(): void {
    if (++this.writes % this.sweepEvery === 0) void this.purgeExpired();
  }
}

function keyOf({ scope, method, route, key }: RecordIdentity): string {
  return JSON.stringify([scope, method, route, key]);
}
