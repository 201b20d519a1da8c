import { decideClaim, type IdempotencyRecord, type ObservedRecord, type RecordIdentity } from '../../core/record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  type ResponsePayload,
  UnstorableResponseError,
} from '../idempotency.store.js';
import { type Queryable } from './connection.js';
import {
  MAX_SLOW_PATH_ATTEMPTS,
  SQL_CLAIM,
  SQL_CLAIM_WAITING,
  SQL_COMPLETE,
  SQL_EXAMINE_FOR_UPDATE,
  SQL_INSERT,
  SQL_RECLAIM,
  UNSTORABLE,
} from './sql.js';

/** A row of idempotency_keys as the store's statements return it (the claim adds its flags). */
export interface KeyRow {
  scope: string;
  method: string;
  route: string;
  idempotency_key: string;
  status: IdempotencyRecord['status'];
  fingerprint: string;
  owner_token: string | null;
  locked_until: Date | null;
  response: IdempotencyRecord['response'];
  created_at: Date;
  completed_at: Date | null;
  expires_at: Date;
  claimed?: boolean;
  expired?: boolean;
  lease_lapsed?: boolean;
}

/**
 * The fast path on a pool or a transaction's connection; undefined when the row must be
 * examined under a lock (expired, abandoned, or changed between the INSERT and the snapshot).
 */
export async function claimFast(
  db: Queryable,
  request: ClaimRequest,
  lockTimeout?: string,
): Promise<ClaimResult | undefined> {
  const { rows } = await (lockTimeout === undefined
    ? db.query(SQL_CLAIM, claimParameters(request))
    : db.query(SQL_CLAIM_WAITING, [...claimParameters(request), lockTimeout]));
  const row = rows[0];
  if (row?.claimed) return { claimed: true, record: toRecord(row) };
  if (!row) return undefined;
  const observed = toObserved(row);
  return observed.expired || observed.leaseLapsed ? undefined : { claimed: false, observed };
}

/**
 * The slow path, inside a transaction: examine the row under FOR UPDATE, decide with the
 * state machine, then insert, take over or re-claim. Each statement sees a fresh snapshot
 * (READ COMMITTED), so a row that appeared or vanished meanwhile is seen on the next round.
 */
export async function claimUnderLock(
  db: Queryable,
  request: ClaimRequest,
  beforeRound: () => Promise<void> = async () => {},
): Promise<ClaimResult> {
  const params = claimParameters(request);
  for (let attempt = 0; attempt < MAX_SLOW_PATH_ATTEMPTS; attempt++) {
    await beforeRound();
    const { rows } = await db.query(SQL_EXAMINE_FOR_UPDATE, identityParameters(request.identity));
    if (rows.length === 0) {
      const inserted = await db.query(SQL_INSERT, params);
      if (inserted.rows[0]) return { claimed: true, record: toRecord(inserted.rows[0]) };
      continue;
    }
    const observed = toObserved(rows[0]);
    const decision = decideClaim(observed, request.fingerprint, request.acceptedFingerprints);
    if (decision !== 'reclaim' && decision !== 'take-over') return { claimed: false, observed };
    const updated = await db.query(SQL_RECLAIM, params);
    if (updated.rows[0]) return { claimed: true, record: toRecord(updated.rows[0]) };
  }
  throw new Error('idempotency claim did not settle: the record kept changing concurrently');
}

export async function completeOn(
  db: Queryable,
  identity: RecordIdentity,
  ownerToken: string,
  response: ResponsePayload,
  ttlMs: number,
): Promise<boolean> {
  let text: string;
  try {
    text = JSON.stringify(response);
  } catch (error) {
    if (error instanceof RangeError) throw new UnstorableResponseError(error.message);
    throw error;
  }
  try {
    const { rowCount } = await db.query(SQL_COMPLETE, [...identityParameters(identity), ownerToken, text, ttlMs]);
    return rowCount === 1;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code && UNSTORABLE.has(code)) throw new UnstorableResponseError((error as Error).message);
    throw error;
  }
}

export function identityParameters(identity: RecordIdentity): unknown[] {
  return [identity.scope, identity.method, identity.route, identity.key];
}

export function claimParameters(request: ClaimRequest): unknown[] {
  return [
    ...identityParameters(request.identity),
    request.fingerprint,
    request.ownerToken,
    request.leaseMs,
    request.ttlMs,
  ];
}

export function toRecord(row: KeyRow): IdempotencyRecord {
  return {
    scope: row.scope,
    method: row.method,
    route: row.route,
    key: row.idempotency_key,
    status: row.status,
    fingerprint: row.fingerprint,
    ownerToken: row.owner_token,
    lockedUntil: row.locked_until,
    response: row.response,
    createdAt: row.created_at,
    completedAt: row.completed_at,
    expiresAt: row.expires_at,
  };
}

export function toObserved(row: KeyRow): ObservedRecord {
  return { record: toRecord(row), expired: row.expired === true, leaseLapsed: row.lease_lapsed === true };
}
