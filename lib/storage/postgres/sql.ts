export const IDEMPOTENCY_TABLE = 'idempotency_keys';
export const SETTINGS_TABLE = 'idempotency_settings';

/*
 * Every SQL statement of the PostgreSQL store, each with what it guarantees, and the
 * PostgreSQL error codes it tells apart. All values are parameters; $1..$4 are always the
 * record identity (scope, method, route, key), which is the table's primary key.
 * All times come from the database clock, never an app instance's: statement_timestamp(),
 * not now(), because now() is the transaction's start, which in the slow path is taken
 * before its row-lock wait: a lease written from it could have lapsed already.
 */

const NOW = 'statement_timestamp()';

export const IDENTITY = 'k.scope = $1 AND k.method = $2 AND k.route = $3 AND k.idempotency_key = $4';

/** A record counts as absent once expired, but never while a live lease protects a running request. */
export const EXPIRED = `(k.expires_at <= ${NOW} AND NOT (k.status = 'in_progress' AND k.locked_until > ${NOW}))`;
export const LEASE_LAPSED = `(k.status = 'in_progress' AND k.locked_until <= ${NOW})`;

const MS = "* interval '1 millisecond'";

/**
 * The columns every statement returns, named rather than `k.*`: a prepared statement whose
 * result columns changed (a column added to the table by a later migration, while the
 * application runs) would fail until its connection closes.
 */
const COLUMNS = [
  'scope',
  'method',
  'route',
  'idempotency_key',
  'fingerprint',
  'status',
  'owner_token',
  'locked_until',
  'response',
  'created_at',
  'completed_at',
  'expires_at',
]
  .map((column) => `k.${column}`)
  .join(', ');

/**
 * Fast path, one round trip for the common cases. Looks the record up and, only if there
 * is none, inserts it: the primary key makes two concurrent inserts impossible (the
 * loser's DO NOTHING fires, and it goes to the slow path). A replay thus costs a single
 * indexed read: no insert attempt, no trigger, no lock on the existing row (replays must
 * not serialise on it). It never takes a lapsed lease over (that row exists: slow path), so
 * its won claims need no take-over flag.
 */
export const SQL_CLAIM = `
WITH existing AS (
  SELECT ${COLUMNS} FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY}
),
inserted AS (
  INSERT INTO ${IDEMPOTENCY_TABLE} AS k
    (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
  SELECT $1, $2, $3, $4, $5, 'in_progress', $6::uuid, ${NOW} + $7::float8 ${MS}, ${NOW} + $8::float8 ${MS}, ${NOW}
  WHERE NOT EXISTS (SELECT 1 FROM existing)
  ON CONFLICT (scope, method, route, idempotency_key) DO NOTHING
  RETURNING ${COLUMNS}
)
SELECT true AS claimed, i.*, false AS expired, false AS lease_lapsed FROM inserted i
UNION ALL
SELECT false, k.*, ${EXPIRED}, ${LEASE_LAPSED} FROM existing k`;

/**
 * Group commit of lease-mode claims: the fast path for many claims in one statement (one
 * round trip, one commit). $1..$8 are arrays, one element per claim, in arrival order.
 * Where several claims share an identity, only the first is inserted (the others then see
 * it held); rows are inserted in primary-key order, so that two groups with keys in common
 * wait for each other in the same order, never in a cycle.
 */
export const SQL_CLAIM_BATCH = `
WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::float8[], $8::float8[])
    WITH ORDINALITY AS i(scope, method, route, idempotency_key, fingerprint, owner_token, lease_ms, ttl_ms, arrival)
),
existing AS (
  SELECT ${COLUMNS} FROM ${IDEMPOTENCY_TABLE} k
  WHERE (k.scope, k.method, k.route, k.idempotency_key) IN (SELECT scope, method, route, idempotency_key FROM input)
),
inserted AS (
  INSERT INTO ${IDEMPOTENCY_TABLE} AS k
    (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
  SELECT DISTINCT ON (i.scope, i.method, i.route, i.idempotency_key)
         i.scope, i.method, i.route, i.idempotency_key, i.fingerprint, 'in_progress', i.owner_token,
         ${NOW} + i.lease_ms ${MS}, ${NOW} + i.ttl_ms ${MS}, ${NOW}
  FROM input i
  WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE (e.scope, e.method, e.route, e.idempotency_key) = (i.scope, i.method, i.route, i.idempotency_key))
  ORDER BY i.scope, i.method, i.route, i.idempotency_key, i.arrival
  ON CONFLICT (scope, method, route, idempotency_key) DO NOTHING
  RETURNING ${COLUMNS}
)
SELECT true AS claimed, i.*, false AS expired, false AS lease_lapsed FROM inserted i
UNION ALL
SELECT false, k.*, ${EXPIRED}, ${LEASE_LAPSED} FROM existing k`;

/**
 * Group commit of lease-mode completions: SQL_COMPLETE for many records in one statement.
 * Returns the identities it completed; the others were fenced out.
 */
export const SQL_COMPLETE_BATCH = `
UPDATE ${IDEMPOTENCY_TABLE} AS k
SET status = 'completed', response = i.response::jsonb, owner_token = NULL, locked_until = NULL,
    completed_at = ${NOW}, expires_at = ${NOW} + i.ttl_ms ${MS}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::float8[])
  AS i(scope, method, route, idempotency_key, owner_token, response, ttl_ms)
WHERE (k.scope, k.method, k.route, k.idempotency_key) = (i.scope, i.method, i.route, i.idempotency_key)
  AND k.status = 'in_progress' AND k.owner_token = i.owner_token AND NOT ${EXPIRED}
RETURNING k.scope, k.method, k.route, k.idempotency_key`;

/**
 * Bounds the next lock wait of a transactional-mode claim (a slow-path round) by the time
 * left to wait, and by nothing else: a server statement_timeout shorter than that wait
 * would cancel it instead.
 */
export const SQL_SET_LOCK_TIMEOUT =
  "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)";

/**
 * Where the handler's part of a transactional-mode transaction starts. The transaction
 * stays open while the handler runs (its external calls included), so the server's own
 * limits are replaced for it: no transaction_timeout (PostgreSQL 17+, set only where it
 * exists) and an idle-in-transaction limit of the route's lease, which is what frees the
 * key of a host that vanished without closing its connection. The handler's statements run
 * with the session's lock_timeout and statement_timeout. The savepoint lets a stored 4xx
 * discard the handler's writes and keep the claim.
 */
export function beginHandlerStatement(idleLimitMs: number): string {
  return [
    'SET LOCAL lock_timeout TO DEFAULT',
    'SET LOCAL statement_timeout TO DEFAULT',
    `SET LOCAL idle_in_transaction_session_timeout = ${Math.trunc(idleLimitMs)}`,
    "SELECT CASE WHEN current_setting('transaction_timeout', true) IS NOT NULL THEN set_config('transaction_timeout', '0', true) END",
    `SAVEPOINT ${HANDLER_SAVEPOINT}`,
  ].join('; ');
}

/**
 * Slow path, step 1: examine the existing record under a row lock, so that the decision
 * (take over, re-claim, replay, conflict) and the change it leads to see the same row.
 */
export const SQL_EXAMINE_FOR_UPDATE = `
SELECT ${COLUMNS}, ${EXPIRED} AS expired, ${LEASE_LAPSED} AS lease_lapsed
FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY} FOR UPDATE`;

/** Slow path, a key with no row at all: insert; DO NOTHING if a concurrent claim got there first. */
export const SQL_INSERT = `
INSERT INTO ${IDEMPOTENCY_TABLE} AS k
  (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, 'in_progress', $6, ${NOW} + $7::float8 ${MS}, ${NOW} + $8::float8 ${MS}, ${NOW})
ON CONFLICT (scope, method, route, idempotency_key) DO NOTHING
RETURNING ${COLUMNS}`;

/**
 * Slow path, step 2: re-claim an expired record or take over a lapsed lease, with a new
 * owner token (which fences out the previous owner). Guarded so it cannot fire on a live
 * record. A take-over keeps the record's fingerprint: it is the same request, perhaps
 * fingerprinted under a previous secret. Which of the two it was, the examination under the
 * same row lock has told (no column of the updated row can: they hold the new values).
 */
export const SQL_RECLAIM = `
UPDATE ${IDEMPOTENCY_TABLE} AS k
SET fingerprint = CASE WHEN ${EXPIRED} THEN $5 ELSE k.fingerprint END, status = 'in_progress', owner_token = $6,
    locked_until = ${NOW} + $7::float8 ${MS}, expires_at = ${NOW} + $8::float8 ${MS},
    response = NULL, created_at = ${NOW}, completed_at = NULL
WHERE ${IDENTITY} AND (${EXPIRED} OR ${LEASE_LAPSED})
RETURNING ${COLUMNS}`;

/**
 * in_progress -> completed, only by the owner (fencing) and only while the record is live:
 * an expired record is absent, even for its former owner. The TTL counts from completion.
 */
export const SQL_COMPLETE = `
UPDATE ${IDEMPOTENCY_TABLE} AS k
SET status = 'completed', response = $6::jsonb, owner_token = NULL, locked_until = NULL,
    completed_at = ${NOW}, expires_at = ${NOW} + $7::float8 ${MS}
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/**
 * SQL_COMPLETE inside a transactional-mode transaction, sent with the COMMIT in one round
 * trip: if it matched no record, it fails, and the COMMIT after it never runs (the handler's
 * writes must not commit without their record).
 */
export const SQL_COMPLETE_OR_FAIL = `
WITH done AS (${SQL_COMPLETE.trim()} RETURNING 1)
SELECT CASE WHEN count(*) = 1 THEN true
  ELSE ('the claimed record was not found in its own transaction: ' || count(*))::boolean END AS completed
FROM done`;

/** in_progress -> absent, only by the owner: a retry may run again. */
export const SQL_RELEASE = `
DELETE FROM ${IDEMPOTENCY_TABLE} AS k
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/** Lease renewal (heartbeat) of a running request, only by the owner. */
export const SQL_RENEW = `
UPDATE ${IDEMPOTENCY_TABLE} AS k SET locked_until = ${NOW} + $6::float8 ${MS}
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/** Look-up of a live record. */
export const SQL_FIND = `SELECT ${COLUMNS} FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY} AND NOT ${EXPIRED}`;

/** Look-ups of several live records in one statement (arrays of identities; one may come more than once). */
export const SQL_FIND_BATCH = `
SELECT ${COLUMNS} FROM ${IDEMPOTENCY_TABLE} k
WHERE (k.scope, k.method, k.route, k.idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]))
  AND NOT ${EXPIRED}`;

/**
 * One purge batch, oldest expiry first through the expires_at index. SKIP LOCKED: rows a
 * live request or another purger holds are left for a later batch instead of waited for.
 */
export const SQL_PURGE_BATCH = `
DELETE FROM ${IDEMPOTENCY_TABLE}
WHERE ctid = ANY(ARRAY(
  SELECT k.ctid FROM ${IDEMPOTENCY_TABLE} k
  WHERE ${EXPIRED}
  ORDER BY k.expires_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED))`;

/** The start-up check that each table the store needs exists (no rows are read). */
export const SQL_VERIFY = [IDEMPOTENCY_TABLE, SETTINGS_TABLE].map((table) => ({
  table,
  sql: `SELECT 1 FROM ${table} LIMIT 0`,
}));

/** The fingerprint secret: the first instance to start creates it; every other one reads the same. */
export const SQL_SHARED_SECRET = `
WITH created AS (
  INSERT INTO ${SETTINGS_TABLE} (name, value) VALUES ('fingerprint_secret', $1)
  ON CONFLICT (name) DO NOTHING
  RETURNING value
)
SELECT value FROM created
UNION ALL
SELECT value FROM ${SETTINGS_TABLE} WHERE name = 'fingerprint_secret'`;

/**
 * Names of the statements every request sends, prepared once per connection (parsed and
 * planned once, not per request) unless the store is told not to.
 */
export const PREPARED_NAMES = new Map<string, string>([
  [SQL_CLAIM, 'idempotency_claim'],
  [SQL_CLAIM_BATCH, 'idempotency_claim_batch'],
  [SQL_COMPLETE, 'idempotency_complete'],
  [SQL_COMPLETE_BATCH, 'idempotency_complete_batch'],
  [SQL_FIND, 'idempotency_find'],
  [SQL_FIND_BATCH, 'idempotency_find_batch'],
  [SQL_RENEW, 'idempotency_renew'],
  [SQL_RELEASE, 'idempotency_release'],
]);

/** Transactional mode's claim and completion, prepared with SQL (its statements travel as simple queries). */
export const TX_CLAIM = 'idempotency_tx_claim';
export const TX_COMPLETE = 'idempotency_tx_complete';
export const SQL_PREPARE_TRANSACTIONAL = [
  `PREPARE ${TX_CLAIM} (text, text, text, text, text, uuid, float8, float8) AS ${SQL_CLAIM}`,
  `PREPARE ${TX_COMPLETE} (text, text, text, text, uuid, text, float8) AS ${SQL_COMPLETE_OR_FAIL}`,
];

/** A prepared statement that should exist on the connection does not (its session was reset): invalid_sql_statement_name. */
export const PREPARED_STATEMENT_MISSING = '26000';
/** duplicate_prepared_statement: another copy of the library prepared it on this connection first. */
export const PREPARED_STATEMENT_EXISTS = '42P05';

/** The slow path's transaction: its lock waits are bounded, and no server-side statement time-out cuts them short instead. */
export const SQL_BEGIN_SLOW_PATH = "BEGIN; SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = 0";

/** The server ended the session: admin_shutdown, crash_shutdown, cannot_connect_now (class 08 is connection exceptions). */
export const CONNECTION_ENDED = new Set(['57P01', '57P02', '57P03']);

/** A value PostgreSQL will never store: program_limit_exceeded (a jsonb string over 256 MiB), untranslatable_character. */
export const UNSTORABLE = new Set(['54000', '22P05']);

export const SERIALIZATION_FAILURE = '40001';

/** PostgreSQL's query_canceled: a statement_timeout ran out (or the statement was cancelled). */
export const QUERY_CANCELED = '57014';

/** How often the slow path re-examines a key whose row appeared or vanished under it. */
export const MAX_SLOW_PATH_ATTEMPTS = 5;

export const HANDLER_SAVEPOINT = 'idempotent_handler';
