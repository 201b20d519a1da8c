import { randomUUID } from 'node:crypto';
import type { IdempotencyRecord, RecordIdentity, StoredResponse } from '../core/record.js';
import type { ClaimRequest, ClaimResult } from '../storage/idempotency.store.js';

/* Values and helpers shared by the scenarios of the store contract. */

export type Observed = Extract<ClaimResult, { claimed: false }>['observed'];

export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;
export const LEASE = 30 * SECOND;

/** A response with what tends to get lost: key order and spacing in the body, non-ASCII, a list header. */
export const RESPONSE: StoredResponse = {
  status: 201,
  headers: { 'content-type': 'application/json; charset=utf-8', location: '/payments/7', link: ['</a>', '</b>'] },
  kind: 'json',
  body: '{"zeta":1, "alpha":{"b":2.5,"a":[3,"x"]},"note":"ünï ✓"}',
  encoding: 'utf8',
};

export function identity(): RecordIdentity {
  return { scope: 'tenant-a', method: 'POST', route: '/payments', key: randomUUID() };
}

export function request(id: RecordIdentity, overrides: Partial<ClaimRequest> = {}): ClaimRequest {
  return {
    identity: id,
    fingerprint: 'fp-original',
    ownerToken: randomUUID(),
    leaseMs: LEASE,
    ttlMs: HOUR,
    ...overrides,
  };
}

export function won(result: ClaimResult): IdempotencyRecord {
  if (!result.claimed) throw new Error(`expected to claim, but observed ${JSON.stringify(result.observed)}`);
  return result.record;
}

export function lost(result: ClaimResult): Observed {
  if (result.claimed) throw new Error(`expected a live record, but claimed ${JSON.stringify(result.record)}`);
  return result.observed;
}
