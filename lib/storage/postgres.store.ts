import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DataSource, EntityManager, QueryRunner } from 'typeorm';
import { decideClaim, type IdempotencyRecord, type ObservedRecord, type RecordIdentity } from '../record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  purgeLimits,
  type ResponsePayload,
  type StoreTransaction,
  UnstorableResponseError,
} from './idempotency.store.js';

/** A row of idempotency_keys as the store's statements return it (the claim adds its flags). */
interface KeyRow {
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

/** The subset of node-postgres' Pool and PoolClient this store uses. */
interface Queryable {
  query<Row = KeyRow>(text: string, values?: unknown[]): Promise<{ rows: Row[]; rowCount: number | null }>;
}
interface PoolClient extends Queryable {
  release(error?: Error | boolean): void;
  end(): Promise<void>;
  on(event: 'error', listener: (error: Error) => void): unknown;
  removeListener(event: 'error', listener: (error: Error) => void): unknown;
}
interface Pool extends Queryable {
  connect(): Promise<PoolClient>;
  on(event: 'acquire', listener: (client: PoolClient) => void): unknown;
}

const guarded = new WeakSet<object>();

/**
 * node-postgres drops the pool's own 'error' listener from a client the moment it hands the
 * client out, and a connection that breaks in that same tick (a FATAL message read with the
 * reply before it) emits 'error' before any later listener exists: an unhandled 'error'
 * event ends the process. So every client of the pool gets a listener of its own, attached
 * synchronously on 'acquire', for good. It only keeps the process alive: the broken
 * connection still fails the query that uses it, and the pool discards it.
 */
function guardClients(pool: Pool): void {
  if (guarded.has(pool)) return;
  guarded.add(pool);
  pool.on('acquire', (client) => {
    if (guarded.has(client)) return;
    guarded.add(client);
    client.on('error', () => {});
  });
}

export const IDEMPOTENCY_TABLE = 'idempotency_keys';
export const SETTINGS_TABLE = 'idempotency_settings';

/*
 * Every SQL statement of the library. All values are parameters; $1..$4 are always the
 * record identity (scope, method, route, key), which is the table's primary key.
 * All times come from the database clock, never an app instance's: statement_timestamp(),
 * not now(), because now() is the transaction's start, which in the slow path is taken
 * before its row-lock wait: a lease written from it could have lapsed already.
 */

const NOW = 'statement_timestamp()';

const IDENTITY = 'k.scope = $1 AND k.method = $2 AND k.route = $3 AND k.idempotency_key = $4';

/** A record counts as absent once expired, but never while a live lease protects a running request. */
const EXPIRED = `(k.expires_at <= ${NOW} AND NOT (k.status = 'in_progress' AND k.locked_until > ${NOW}))`;
const LEASE_LAPSED = `(k.status = 'in_progress' AND k.locked_until <= ${NOW})`;

const MS = "* interval '1 millisecond'";

/** The claim's wait for another owner's uncommitted row is bounded by the time left to wait. */
const TRANSACTION_SETTINGS = `set_config('lock_timeout', $9, true) AS lock_timeout`;

/**
 * Fast path, one round trip for the common cases. Looks the record up and, only if there
 * is none, inserts it: the primary key makes two concurrent inserts impossible (the
 * loser's DO NOTHING fires, and it goes to the slow path). A replay thus costs a single
 * indexed read: no insert attempt, no trigger, no lock on the existing row (replays must
 * not serialise on it).
 */
const SQL_CLAIM = claimStatement(false);

/**
 * The same inside a transactional-mode transaction, where the INSERT may wait on another
 * owner's uncommitted claim: $9 becomes the transaction's lock_timeout first (the
 * materialised CTE runs before the INSERT reads its row from it), saving a round trip.
 */
const SQL_CLAIM_WAITING = claimStatement(true);

function claimStatement(withLockTimeout: boolean): string {
  const settings = withLockTimeout ? `settings AS MATERIALIZED (SELECT ${TRANSACTION_SETTINGS}),\n` : '';
  return `
WITH ${settings}existing AS (
  SELECT k.* FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY}
),
inserted AS (
  INSERT INTO ${IDEMPOTENCY_TABLE} AS k
    (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
  SELECT $1, $2, $3, $4, $5, 'in_progress', $6::uuid, ${NOW} + $7::float8 ${MS}, ${NOW} + $8::float8 ${MS}, ${NOW}
  ${withLockTimeout ? 'FROM settings ' : ''}WHERE NOT EXISTS (SELECT 1 FROM existing)
  ON CONFLICT (scope, method, route, idempotency_key) DO NOTHING
  RETURNING k.*
)
SELECT true AS claimed, i.*, false AS expired, false AS lease_lapsed FROM inserted i
UNION ALL
SELECT false, k.*, ${EXPIRED}, ${LEASE_LAPSED} FROM existing k`;
}

/**
 * Bounds the next lock wait of a transactional-mode claim (a slow-path round) by the time
 * left to wait, and by nothing else: a server statement_timeout shorter than that wait
 * would cancel it instead.
 */
const SQL_SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)";

/**
 * Where the handler's part of a transactional-mode transaction starts. The transaction
 * stays open while the handler runs (its external calls included), so the server's own
 * limits are replaced for it: no transaction_timeout (PostgreSQL 17+, set only where it
 * exists) and an idle-in-transaction limit of the route's lease, which is what frees the
 * key of a host that vanished without closing its connection. The handler's statements run
 * with the session's lock_timeout and statement_timeout. The savepoint lets a stored 4xx
 * discard the handler's writes and keep the claim.
 */
function beginHandlerStatement(idleLimitMs: number): string {
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
const SQL_EXAMINE_FOR_UPDATE = `
SELECT k.*, ${EXPIRED} AS expired, ${LEASE_LAPSED} AS lease_lapsed
FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY} FOR UPDATE`;

/** Slow path, a key with no row at all: insert; DO NOTHING if a concurrent claim got there first. */
const SQL_INSERT = `
INSERT INTO ${IDEMPOTENCY_TABLE} AS k
  (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, 'in_progress', $6, ${NOW} + $7::float8 ${MS}, ${NOW} + $8::float8 ${MS}, ${NOW})
ON CONFLICT (scope, method, route, idempotency_key) DO NOTHING
RETURNING k.*`;

/**
 * Slow path, step 2: re-claim an expired record or take over a lapsed lease, with a new
 * owner token (which fences out the previous owner). Guarded so it cannot fire on a live
 * record. A take-over keeps the record's fingerprint: it is the same request, perhaps
 * fingerprinted under a previous secret.
 */
const SQL_RECLAIM = `
UPDATE ${IDEMPOTENCY_TABLE} AS k
SET fingerprint = CASE WHEN ${EXPIRED} THEN $5 ELSE k.fingerprint END, status = 'in_progress', owner_token = $6,
    locked_until = ${NOW} + $7::float8 ${MS}, expires_at = ${NOW} + $8::float8 ${MS},
    response = NULL, created_at = ${NOW}, completed_at = NULL
WHERE ${IDENTITY} AND (${EXPIRED} OR ${LEASE_LAPSED})
RETURNING k.*`;

/**
 * in_progress -> completed, only by the owner (fencing) and only while the record is live:
 * an expired record is absent, even for its former owner. The TTL counts from completion.
 */
const SQL_COMPLETE = `
UPDATE ${IDEMPOTENCY_TABLE} AS k
SET status = 'completed', response = $6::jsonb, owner_token = NULL, locked_until = NULL,
    completed_at = ${NOW}, expires_at = ${NOW} + $7::float8 ${MS}
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/** in_progress -> absent, only by the owner: a retry may run again. */
const SQL_RELEASE = `
DELETE FROM ${IDEMPOTENCY_TABLE} AS k
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/** Lease renewal (heartbeat) of a running request, only by the owner. */
const SQL_RENEW = `
UPDATE ${IDEMPOTENCY_TABLE} AS k SET locked_until = ${NOW} + $6::float8 ${MS}
WHERE ${IDENTITY} AND k.status = 'in_progress' AND k.owner_token = $5 AND NOT ${EXPIRED}`;

/** Look-up of a live record. */
const SQL_FIND = `SELECT k.* FROM ${IDEMPOTENCY_TABLE} k WHERE ${IDENTITY} AND NOT ${EXPIRED}`;

/**
 * One purge batch, oldest expiry first through the expires_at index. SKIP LOCKED: rows a
 * live request or another purger holds are left for a later batch instead of waited for.
 */
const SQL_PURGE_BATCH = `
DELETE FROM ${IDEMPOTENCY_TABLE}
WHERE ctid = ANY(ARRAY(
  SELECT k.ctid FROM ${IDEMPOTENCY_TABLE} k
  WHERE ${EXPIRED}
  ORDER BY k.expires_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED))`;

const SQL_VERIFY = `SELECT 1 FROM ${IDEMPOTENCY_TABLE} LIMIT 0`;

/** The fingerprint secret: the first instance to start creates it; every other one reads the same. */
const SQL_SHARED_SECRET = `
WITH created AS (
  INSERT INTO ${SETTINGS_TABLE} (name, value) VALUES ('fingerprint_secret', $1)
  ON CONFLICT (name) DO NOTHING
  RETURNING value
)
SELECT value FROM created
UNION ALL
SELECT value FROM ${SETTINGS_TABLE} WHERE name = 'fingerprint_secret'`;

/** The slow path's transaction: its lock waits are bounded, and no server-side statement time-out cuts them short instead. */
const SQL_BEGIN_SLOW_PATH = "BEGIN; SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = 0";

/** The server ended the session: admin_shutdown, crash_shutdown, cannot_connect_now (class 08 is connection exceptions). */
const CONNECTION_ENDED = new Set(['57P01', '57P02', '57P03']);

/** A value PostgreSQL will never store: program_limit_exceeded (a jsonb string over 256 MiB), untranslatable_character. */
const UNSTORABLE = new Set(['54000', '22P05']);

const SERIALIZATION_FAILURE = '40001';

/** PostgreSQL's query_canceled: a statement_timeout ran out (or the statement was cancelled). */
const QUERY_CANCELED = '57014';

/** How often the slow path re-examines a key whose row appeared or vanished under it. */
const MAX_SLOW_PATH_ATTEMPTS = 5;

/**
 * The PostgreSQL store: records in the `idempotency_keys` table, on the application's
 * TypeORM DataSource. It talks to the DataSource's node-postgres pool directly: one
 * pooled query per operation, without a TypeORM QueryRunner per call.
 */
export class PostgresIdempotencyStore extends IdempotencyStore {
  private readonly pool: Pool;

  constructor(private readonly dataSource: DataSource) {
    super();
    if (dataSource.options.type !== 'postgres') {
      throw new Error(
        `IdempotencyModule: the DataSource is of type "${dataSource.options.type}"; ` +
          'the PostgreSQL store needs a DataSource of type "postgres".',
      );
    }
    // The driver's pool exists once the DataSource is initialised, which
    // TypeOrmModule does before any provider that injects it is created.
    this.pool = (dataSource.driver as unknown as { master: Pool }).master;
    guardClients(this.pool);
  }

  async claim(request: ClaimRequest): Promise<ClaimResult> {
    const fast = await this.withClient(request.deadline, (client) => claimFast(client, request));
    if (fast) return fast;
    return this.withClient(request.deadline, async (client) => {
      // A row lock held for long (a stalled transaction) fails the claim instead of hanging it.
      await client.query(SQL_BEGIN_SLOW_PATH);
      try {
        const result = await claimUnderLock(client, request);
        await client.query('COMMIT');
        return result;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw error;
      }
    });
  }

  override async openTransaction(deadline?: number): Promise<StoreTransaction> {
    const runner = this.dataSource.createQueryRunner();
    let client: PoolClient;
    try {
      client = (await withinDeadline(runner.connect(), deadline, () => void runner.release())) as PoolClient;
    } catch (error) {
      // After a time-out, the connection is released when (if ever) the pool hands it over.
      if (!(error instanceof PoolTimeoutError)) await runner.release();
      throw error;
    }
    const transaction = new PostgresStoreTransaction(runner, client);
    try {
      // START TRANSACTION through TypeORM, so that the handler's own
      // manager.transaction() calls nest as savepoints inside ours.
      await runner.startTransaction();
      return transaction;
    } catch (error) {
      await transaction.rollback();
      throw error;
    }
  }

  /**
   * Runs `work` on a pooled connection that has an 'error' listener for as long as it is
   * held (node-postgres emits 'error' on a checked-out client whose connection drops, which
   * would otherwise end the process). Acquiring it is bounded by `deadline`. A client whose
   * work failed is discarded rather than returned to the pool.
   */
  private async withClient<T>(deadline: number | undefined, work: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await withinDeadline(this.pool.connect(), deadline, (late) => late.release());
    let broken: Error | undefined;
    const onError = (error: Error) => (broken = error);
    client.on('error', onError);
    try {
      return await work(client);
    } catch (error) {
      broken ??= error as Error;
      throw error;
    } finally {
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  async complete(
    identity: RecordIdentity,
    ownerToken: string,
    response: ResponsePayload,
    ttlMs: number,
  ): Promise<boolean> {
    return completeOn(this.pool, identity, ownerToken, response, ttlMs);
  }

  async release(identity: RecordIdentity, ownerToken: string): Promise<boolean> {
    const { rowCount } = await this.pool.query(SQL_RELEASE, [...identityParameters(identity), ownerToken]);
    return rowCount === 1;
  }

  async renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean> {
    const { rowCount } = await this.pool.query(SQL_RENEW, [...identityParameters(identity), ownerToken, leaseMs]);
    return rowCount === 1;
  }

  async find(identity: RecordIdentity, deadline?: number): Promise<IdempotencyRecord | null> {
    const { rows } =
      deadline === undefined
        ? await this.pool.query(SQL_FIND, identityParameters(identity))
        : await this.withClient(deadline, (client) => client.query(SQL_FIND, identityParameters(identity)));
    return rows[0] ? toRecord(rows[0]) : null;
  }

  async sharedSecret(): Promise<Buffer> {
    // A concurrent first start may have inserted it after this statement's snapshot (read
    // committed), or made it fail with a serialization error (a stricter default isolation): read again.
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const { rows } = await this.pool.query<{ value: string }>(SQL_SHARED_SECRET, [
          randomBytes(32).toString('base64'),
        ]);
        if (rows[0]) return Buffer.from(rows[0].value, 'base64');
      } catch (error) {
        if ((error as { code?: string }).code !== SERIALIZATION_FAILURE) throw error;
      }
    }
    throw new Error(`IdempotencyModule: could not read the fingerprint secret from "${SETTINGS_TABLE}".`);
  }

  async purgeExpired(options: PurgeOptions = {}): Promise<number> {
    const { batchSize, maxBatches, pauseMs } = purgeLimits(options);
    let total = 0;
    for (let batch = 0; batch < maxBatches; batch++) {
      if (batch > 0 && pauseMs > 0) await sleep(pauseMs);
      const { rowCount } = await this.pool.query(SQL_PURGE_BATCH, [batchSize]);
      total += rowCount ?? 0;
      if ((rowCount ?? 0) < batchSize) break;
    }
    return total;
  }

  override async verify(): Promise<void> {
    for (const table of [IDEMPOTENCY_TABLE, SETTINGS_TABLE]) {
      try {
        await this.pool.query(SQL_VERIFY.replace(IDEMPOTENCY_TABLE, table));
      } catch (error) {
        if ((error as { code?: string }).code === '42P01') {
          throw new Error(
            `IdempotencyModule: table "${table}" does not exist. Add the exported idempotencyMigrations ` +
              'to your DataSource "migrations" and run them (see the README).',
          );
        }
        throw error;
      }
    }
  }
}

/**
 * The transaction of a transactional-mode request: the record is claimed in it, the
 * handler writes through its EntityManager, and the stored response commits with those
 * writes, or nothing does. Until it commits, the uncommitted primary-key entry is the
 * lock that duplicates wait on.
 */
class PostgresStoreTransaction implements StoreTransaction {
  private settled = false;
  private lost = false;
  private readonly onError = () => {
    this.lost = true;
  };

  constructor(
    private readonly runner: QueryRunner,
    private readonly client: PoolClient,
  ) {
    // Held until the transaction settles: a dropped connection marks it lost, never crashes the process.
    client.on('error', this.onError);
  }

  get manager(): EntityManager {
    return this.runner.manager;
  }

  /**
   * Whether the connection broke: its 'error' event came, or `cause` (what the handler
   * threw) is a connection failure, which can reach the handler before the event does.
   */
  isLost(cause?: unknown): boolean {
    if (this.lost) return true;
    const error = cause as
      { code?: unknown; driverError?: { code?: unknown; message?: unknown }; message?: unknown } | undefined;
    const code = error?.driverError?.code ?? error?.code;
    const text = error?.driverError?.message ?? error?.message;
    const message = typeof text === 'string' ? text : '';
    return (
      (typeof code === 'string' && (code.startsWith('08') || CONNECTION_ENDED.has(code))) ||
      /Connection terminated|not queryable|Client was closed/i.test(message)
    );
  }

  async claim(request: ClaimRequest, waitUntil: number): Promise<ClaimResult> {
    try {
      return await this.claimOnce(request, waitUntil);
    } catch (error) {
      // The server's statement_timeout is shorter than this claim's wait: start over in a
      // fresh transaction whose statements it no longer bounds (lock_timeout does). Through
      // TypeORM, so that the new one gets the DataSource's isolation level and events.
      if ((error as { code?: string }).code !== QUERY_CANCELED || Date.now() >= waitUntil) throw error;
      await this.runner.rollbackTransaction();
      await this.runner.startTransaction();
      await this.client.query('SET LOCAL statement_timeout = 0');
      return this.claimOnce(request, waitUntil);
    }
  }

  private async claimOnce(request: ClaimRequest, waitUntil: number): Promise<ClaimResult> {
    // Each statement that may wait for a concurrent owner (its uncommitted claim, or its
    // row lock) gets the time left until waitUntil as its lock_timeout; the handler's own
    // statements run with the session's setting again (beginHandler()).
    const timeLeft = () => `${Math.max(1, Math.ceil(waitUntil - Date.now()))}ms`;
    return (
      (await claimFast(this.client, request, timeLeft())) ??
      (await claimUnderLock(this.client, request, async () => {
        await this.client.query(SQL_SET_LOCK_TIMEOUT, [timeLeft()]);
      }))
    );
  }

  async beginHandler(idleLimitMs: number): Promise<void> {
    await this.client.query(beginHandlerStatement(idleLimitMs));
  }

  async discardHandlerWrites(): Promise<void> {
    await this.client.query(`ROLLBACK TO SAVEPOINT ${HANDLER_SAVEPOINT}`);
  }

  complete(identity: RecordIdentity, ownerToken: string, response: ResponsePayload, ttlMs: number): Promise<boolean> {
    return completeOn(this.client, identity, ownerToken, response, ttlMs);
  }

  async commit(): Promise<void> {
    // TypeORM counts the handler's manager.transaction() calls; above 1, its commit would
    // only release a savepoint and leave ours open. Such a transaction still running when
    // the handler returned is a handler bug: refuse to commit half of its work.
    const depth = (this.runner as unknown as { transactionDepth: number }).transactionDepth;
    if (depth !== 1) throw new Error('a transaction the handler opened with manager.transaction() is still open');
    await this.runner.commitTransaction();
    this.settled = true;
    this.client.removeListener('error', this.onError);
    await this.runner.release();
  }

  /**
   * A raw ROLLBACK, whatever TypeORM's nesting count says, so that the connection never
   * returns to the pool inside a transaction. If even that fails, the connection is ended,
   * which makes the pool discard it (and PostgreSQL roll back).
   */
  async rollback(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    try {
      if (this.lost) throw new Error('connection lost');
      await this.client.query('ROLLBACK');
    } catch {
      await this.client.end().catch(() => undefined);
    } finally {
      this.client.removeListener('error', this.onError);
      await this.runner.release();
    }
  }
}

class PoolTimeoutError extends Error {
  constructor() {
    super('timed out waiting for a database connection from the pool');
  }
}

/**
 * Waits for a pooled connection until `deadline` at most; one that arrives later is handed
 * to `discard` (a connection the pool gives after the wait was abandoned is not leaked).
 */
async function withinDeadline<T>(
  pending: Promise<T>,
  deadline: number | undefined,
  discard: (late: T) => void,
): Promise<T> {
  if (deadline === undefined) return pending;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PoolTimeoutError()), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([pending, expired]);
  } catch (error) {
    if (error instanceof PoolTimeoutError) pending.then(discard, () => undefined);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

const HANDLER_SAVEPOINT = 'idempotent_handler';

/**
 * The fast path on a pool or a transaction's connection; undefined when the row must be
 * examined under a lock (expired, abandoned, or changed between the INSERT and the snapshot).
 */
async function claimFast(db: Queryable, request: ClaimRequest, lockTimeout?: string): Promise<ClaimResult | undefined> {
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
async function claimUnderLock(
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

async function completeOn(
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

function identityParameters(identity: RecordIdentity): unknown[] {
  return [identity.scope, identity.method, identity.route, identity.key];
}

function claimParameters(request: ClaimRequest): unknown[] {
  return [
    ...identityParameters(request.identity),
    request.fingerprint,
    request.ownerToken,
    request.leaseMs,
    request.ttlMs,
  ];
}

function toRecord(row: KeyRow): IdempotencyRecord {
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

function toObserved(row: KeyRow): ObservedRecord {
  return { record: toRecord(row), expired: row.expired === true, leaseLapsed: row.lease_lapsed === true };
}
