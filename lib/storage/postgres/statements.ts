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
  SQL_CLAIM_BATCH,
  SQL_COMPLETE,
  SQL_COMPLETE_BATCH,
  SQL_EXAMINE_FOR_UPDATE,
  SQL_FIND_BATCH,
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
 * It wins only by inserting where no row exists, so it never takes a record over: a
 * lapsed lease goes to the slow path, which tells (`takenOver`).
 */
export async function claimFast(db: Queryable, request: ClaimRequest): Promise<ClaimResult | undefined> {
  const { rows } = await db.query(SQL_CLAIM, claimParameters(request));
  return fastClaimResult(rows[0], request.ownerToken);
}

/**
 * What the fast path's row says: claimed, held by another, or (undefined) a case for the
 * slow path. A live row that carries this claim's own owner token was inserted by this very
 * claim in a statement whose reply was lost (a group statement re-run alone after its
 * connection dropped past its commit): the claim is won, not held by another.
 */
export function fastClaimResult(row: KeyRow | undefined, ownerToken?: string): ClaimResult | undefined {
  if (row?.claimed) return { claimed: true, record: toRecord(row) };
  if (!row) return undefined;
  const observed = toObserved(row);
  if (observed.expired || observed.leaseLapsed) return undefined;
  if (row.status === 'in_progress' && ownerToken !== undefined && row.owner_token === ownerToken) {
    return { claimed: true, record: observed.record };
  }
  return { claimed: false, observed };
}

/**
 * The fast path for several claims in one statement (group commit), results in their
 * order. Of claims that share an identity, the one whose owner token the inserted row
 * carries has won; the others see that row, held by another.
 */
export async function claimFastMany(
  db: Queryable,
  requests: readonly ClaimRequest[],
): Promise<(ClaimResult | undefined)[]> {
  const columns = transpose(requests.map(claimParameters), 8);
  const { rows } = await db.query(SQL_CLAIM_BATCH, columns);
  const byIdentity = new Map(rows.map((row) => [identityKey(recordIdentity(row)), row]));
  return requests.map((request) => {
    const row = byIdentity.get(identityKey(request.identity));
    if (!row?.claimed || row.owner_token === request.ownerToken) return fastClaimResult(row, request.ownerToken);
    return { claimed: false, observed: { record: toRecord(row), expired: false, leaseLapsed: false } };
  });
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
    if (!updated.rows[0]) continue;
    const record = toRecord(updated.rows[0]);
    // The row lock held since the examination makes the decision the truth about the row replaced.
    return decision === 'take-over' ? { claimed: true, record, takenOver: true } : { claimed: true, record };
  }
  throw new Error('idempotency claim did not settle: the record kept changing concurrently');
}

/** A completion as the store sends it: the response already in the JSON text it is stored as. */
export interface Completion {
  identity: RecordIdentity;
  ownerToken: string;
  text: string;
  ttlMs: number;
}

export async function completeOn(db: Queryable, { identity, ownerToken, text, ttlMs }: Completion): Promise<boolean> {
  try {
    const { rowCount } = await db.query(SQL_COMPLETE, [...identityParameters(identity), ownerToken, text, ttlMs]);
    return rowCount === 1;
  } catch (error) {
    throw unstorableOrSelf(error);
  }
}

/** Several completions of distinct identities in one statement (group commit); whether each completed, in their order. */
export async function completeMany(db: Queryable, completions: readonly Completion[]): Promise<boolean[]> {
  const columns = transpose(
    completions.map(({ identity, ownerToken, text, ttlMs }) => [
      ...identityParameters(identity),
      ownerToken,
      text,
      ttlMs,
    ]),
    7,
  );
  const { rows } = await db.query(SQL_COMPLETE_BATCH, columns);
  const completed = new Set(rows.map((row) => identityKey(recordIdentity(row))));
  return completions.map(({ identity }) => completed.has(identityKey(identity)));
}

/** The response as the JSON text the store writes; one JSON cannot express is unstorable. */
export function responseText(response: ResponsePayload): string {
  try {
    return JSON.stringify(response);
  } catch (error) {
    if (error instanceof RangeError) throw new UnstorableResponseError(error.message);
    throw error;
  }
}

/** An error of a statement that stores a response: UnstorableResponseError when PostgreSQL can never hold it. */
export function unstorableOrSelf(error: unknown): unknown {
  const code = (error as { code?: string }).code;
  return code && UNSTORABLE.has(code) ? new UnstorableResponseError((error as Error).message) : error;
}

/** A look-up of the live record of `identity`; `deadline` bounds waiting for a connection. */
export interface Lookup {
  identity: RecordIdentity;
  deadline?: number;
}

/** Several look-ups in one statement, results in their order (null where there is no live record). */
export async function findMany(db: Queryable, lookups: readonly Lookup[]): Promise<(IdempotencyRecord | null)[]> {
  const columns = transpose(
    lookups.map(({ identity }) => identityParameters(identity)),
    4,
  );
  const { rows } = await db.query(SQL_FIND_BATCH, columns);
  const byIdentity = new Map(rows.map((row) => [identityKey(recordIdentity(row)), toRecord(row)]));
  return lookups.map(({ identity }) => byIdentity.get(identityKey(identity)) ?? null);
}

/** One string per identity, for matching rows to requests. */
export function identityKey(identity: RecordIdentity): string {
  return JSON.stringify([identity.scope, identity.method, identity.route, identity.key]);
}

function recordIdentity(row: Pick<KeyRow, 'scope' | 'method' | 'route' | 'idempotency_key'>): RecordIdentity {
  return { scope: row.scope, method: row.method, route: row.route, key: row.idempotency_key };
}

/** Rows of parameters as columns: one array parameter per column (unnest). */
function transpose(rows: readonly unknown[][], width: number): unknown[][] {
  return Array.from({ length: width }, (_, column) => rows.map((row) => row[column]));
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
