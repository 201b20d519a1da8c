import { setTimeout as sleep } from 'node:timers/promises';
import { OPERATOR_DELETE_SETTING } from '../../../migrations/1796040000000-allow-operator-deletes.js';
import type { IdempotencyRecord, RecordIdentity, RecordStatus } from '../../core/record.js';
import { type PurgeOptions, purgeLimits } from '../idempotency.store.js';
import type { Queryable } from './connection.js';
import { EXPIRED, IDEMPOTENCY_TABLE, IDENTITY, LEASE_LAPSED, SETTINGS_TABLE, SQL_PURGE_BATCH } from './sql.js';
import { identityParameters, type KeyRow, toRecord } from './statements.js';

/*
 * What operators do to idempotency_keys by hand (IdempotencyService.releaseRecord() and
 * deleteRecord(), and the command-line tool): statements outside the request flow, each
 * with what it guarantees. Ages and leases are read off the database clock, as the store's
 * own statements do.
 */

const NOW = 'statement_timestamp()';
const MS_SINCE = (column: string) => `(extract(epoch FROM ${NOW} - ${column}) * 1000)::float8`;

/**
 * A record with its lease or its owner's request still holding a row lock waits at most
 * this long, then fails (55P03) instead of hanging an operator's command.
 */
const LOCK_TIMEOUT = `set_config('lock_timeout', '5s', true)`;

/** in_progress -> absent, whoever owns it (an expired record is absent already): the owner is gone; its late completion is fenced out by the token. */
const SQL_OPERATOR_RELEASE = `
WITH settings AS MATERIALIZED (SELECT ${LOCK_TIMEOUT})
DELETE FROM ${IDEMPOTENCY_TABLE} AS k USING settings
WHERE ${IDENTITY} AND k.status = 'in_progress' AND NOT ${EXPIRED}
RETURNING k.status`;

/**
 * Any record -> absent. The setting, local to this statement's transaction, is what the
 * transition trigger accepts for deleting a completed record before it expires.
 */
const SQL_OPERATOR_DELETE = `
WITH settings AS MATERIALIZED (SELECT ${LOCK_TIMEOUT}, set_config('${OPERATOR_DELETE_SETTING}', 'on', true))
DELETE FROM ${IDEMPOTENCY_TABLE} AS k USING settings
WHERE ${IDENTITY} AND NOT ${EXPIRED}
RETURNING k.status`;

/** One record, expired or not, with its age and lease as the database sees them. */
const SQL_OPERATOR_INSPECT = `
SELECT k.*, ${EXPIRED} AS expired, ${LEASE_LAPSED} AS lease_lapsed,
       ${MS_SINCE('k.created_at')} AS age_ms,
       CASE WHEN k.status = 'in_progress' THEN -${MS_SINCE('k.locked_until')} END AS lease_left_ms
FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY}`;

/** In-progress records at least $1 ms old, oldest first: the candidates for a release. */
const SQL_OPERATOR_LIST = `
SELECT k.*, ${EXPIRED} AS expired, ${LEASE_LAPSED} AS lease_lapsed,
       ${MS_SINCE('k.created_at')} AS age_ms, -${MS_SINCE('k.locked_until')} AS lease_left_ms
FROM ${IDEMPOTENCY_TABLE} k
WHERE k.status = 'in_progress' AND k.created_at <= ${NOW} - $1::float8 * interval '1 millisecond'
ORDER BY k.created_at
LIMIT $2`;

/** What a purge would delete now: the expired records, and the oldest expiry among them. */
const SQL_OPERATOR_EXPIRED = `
SELECT count(*)::int AS count, min(k.expires_at) AS oldest FROM ${IDEMPOTENCY_TABLE} k WHERE ${EXPIRED}`;

/** Live records by status and route, each group's oldest; expired ones are counted apart. */
const SQL_OPERATOR_GROUPS = `
SELECT k.status, k.method, k.route, count(*)::int AS count, min(k.created_at) AS oldest,
       count(*) FILTER (WHERE ${LEASE_LAPSED})::int AS lease_lapsed
FROM ${IDEMPOTENCY_TABLE} k WHERE NOT ${EXPIRED}
GROUP BY k.status, k.method, k.route
ORDER BY k.status, count(*) DESC, k.method, k.route`;

/** The table with its indexes and TOAST (stored responses live there), in bytes. */
const SQL_OPERATOR_TABLE_SIZE = `SELECT pg_total_relation_size('${IDEMPOTENCY_TABLE}')::float8 AS bytes`;

const SQL_OPERATOR_SECRET = `SELECT value FROM ${SETTINGS_TABLE} WHERE name = 'fingerprint_secret'`;

/** A record as an operator sees it: expired ones too, with ages from the database clock. */
export interface InspectedRecord extends IdempotencyRecord {
  /** Past `expiresAt` (and no live lease): counts as absent; the next claim or a purge removes it. */
  readonly expired: boolean;
  /** In progress with its lease lapsed: the next request with this key takes it over. */
  readonly leaseLapsed: boolean;
  /** Milliseconds since the record was claimed (or re-claimed). */
  readonly ageMs: number;
  /** In progress: milliseconds until the lease lapses (negative once it has). Completed: null. */
  readonly leaseLeftMs: number | null;
}

interface InspectedRow extends KeyRow {
  age_ms: number;
  lease_left_ms: number | null;
}

function inspected(row: InspectedRow): InspectedRecord {
  return {
    ...toRecord(row),
    expired: row.expired === true,
    leaseLapsed: row.lease_lapsed === true,
    ageMs: Math.round(row.age_ms),
    leaseLeftMs: row.lease_left_ms === null ? null : Math.round(row.lease_left_ms),
  };
}

export interface ExpiredSummary {
  readonly count: number;
  readonly oldestExpiry: Date | null;
}

export interface StoreStats {
  /** Live records per status and route. */
  readonly groups: ReadonlyArray<{
    status: RecordStatus;
    method: string;
    route: string;
    count: number;
    oldest: Date;
    leaseLapsed: number;
  }>;
  readonly expired: ExpiredSummary;
  /** The oldest live record's creation, or null when there is none. */
  readonly oldest: Date | null;
  readonly tableBytes: number;
}

/** Frees an in-progress record whatever its owner; the status it had, or null when there was no in-progress record. */
export async function releaseRecord(db: Queryable, identity: RecordIdentity): Promise<RecordStatus | null> {
  const { rows } = await db.query<{ status: RecordStatus }>(SQL_OPERATOR_RELEASE, identityParameters(identity));
  return rows[0]?.status ?? null;
}

/** Deletes the record, whatever its state; the status it had, or null when there was none. */
export async function deleteRecord(db: Queryable, identity: RecordIdentity): Promise<RecordStatus | null> {
  const { rows } = await db.query<{ status: RecordStatus }>(SQL_OPERATOR_DELETE, identityParameters(identity));
  return rows[0]?.status ?? null;
}

export async function inspectRecord(db: Queryable, identity: RecordIdentity): Promise<InspectedRecord | null> {
  const { rows } = await db.query<InspectedRow>(SQL_OPERATOR_INSPECT, identityParameters(identity));
  return rows[0] ? inspected(rows[0]) : null;
}

export async function listInProgress(
  db: Queryable,
  { olderThanMs = 0, limit = 100 }: { olderThanMs?: number; limit?: number } = {},
): Promise<InspectedRecord[]> {
  const { rows } = await db.query<InspectedRow>(SQL_OPERATOR_LIST, [olderThanMs, limit]);
  return rows.map(inspected);
}

export async function expiredSummary(db: Queryable): Promise<ExpiredSummary> {
  const { rows } = await db.query<{ count: number; oldest: Date | null }>(SQL_OPERATOR_EXPIRED);
  return { count: rows[0].count, oldestExpiry: rows[0].oldest };
}

export async function storeStats(db: Queryable): Promise<StoreStats> {
  const { rows } = await db.query<{
    status: RecordStatus;
    method: string;
    route: string;
    count: number;
    oldest: Date;
    lease_lapsed: number;
  }>(SQL_OPERATOR_GROUPS);
  const groups = rows.map(({ lease_lapsed, ...group }) => ({ ...group, leaseLapsed: lease_lapsed }));
  const oldest = groups.reduce<Date | null>((min, g) => (min && min <= g.oldest ? min : g.oldest), null);
  const size = await db.query<{ bytes: number }>(SQL_OPERATOR_TABLE_SIZE);
  return { groups, expired: await expiredSummary(db), oldest, tableBytes: size.rows[0].bytes };
}

/**
 * Purges expired records with the store's own batch statement (SKIP LOCKED, oldest expiry
 * first), calling `progress` after each batch with the running total.
 */
export async function purgeWithProgress(
  db: Queryable,
  options: PurgeOptions,
  progress: (deleted: number) => void,
): Promise<number> {
  const { batchSize, maxBatches, pauseMs } = purgeLimits(options);
  let total = 0;
  for (let batch = 0; batch < maxBatches; batch++) {
    if (batch > 0 && pauseMs > 0) await sleep(pauseMs);
    const { rowCount } = await db.query(SQL_PURGE_BATCH, [batchSize]);
    total += rowCount ?? 0;
    progress(total);
    if ((rowCount ?? 0) < batchSize) break;
  }
  return total;
}

/** The fingerprint secret the application created in `idempotency_settings`, or null. */
export async function storedSecret(db: Queryable): Promise<Buffer | null> {
  const { rows } = await db.query<{ value: string }>(SQL_OPERATOR_SECRET);
  return rows[0] ? Buffer.from(rows[0].value, 'base64') : null;
}
