import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DataSource } from 'typeorm';
import type { Pool as PgPool } from 'pg';
import type { IdempotencyRecord, RecordIdentity, RecordStatus } from '../core/record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  purgeLimits,
  type ResponsePayload,
  type StoreTransaction,
} from './idempotency.store.js';
import {
  guardClients,
  type Pool,
  type PoolClient,
  PoolTimeoutError,
  preparing,
  type Queryable,
  withinDeadline,
} from './postgres/connection.js';
import {
  PREPARED_NAMES,
  PREPARED_STATEMENT_MISSING,
  SERIALIZATION_FAILURE,
  SETTINGS_TABLE,
  SQL_BEGIN_SLOW_PATH,
  SQL_FIND,
  SQL_PURGE_BATCH,
  SQL_RELEASE,
  SQL_RENEW,
  SQL_SHARED_SECRET,
  SQL_VERIFY,
} from './postgres/sql.js';
import { GroupedStatements } from './postgres/grouped-statements.js';
import {
  claimFast,
  claimFastMany,
  claimUnderLock,
  type Completion,
  completeMany,
  completeOn,
  findMany,
  identityKey,
  type Lookup,
  identityParameters,
  responseText,
  toRecord,
} from './postgres/statements.js';
import * as operator from './postgres/operator.js';
import { watchSecondConnections } from './postgres/second-connections.js';
import { PostgresStoreTransaction } from './postgres/transaction.js';
import { PoolTransactionHost, type TransactionHost } from './postgres/transaction-host.js';
import { TypeOrmTransactionHost } from './postgres/typeorm-transaction-host.js';

export { IDEMPOTENCY_TABLE } from './postgres/sql.js';

export interface PostgresStoreOptions {
  /**
   * Send the statements of every request as prepared statements (parsed and planned once
   * per connection). Turn off behind a pooler that hands one session's statements to
   * another's connection: PgBouncer in transaction mode before 1.21, or without
   * `max_prepared_statements`.
   * @default true
   */
  preparedStatements?: boolean;
}

/**
 * One statement of each kind in flight at a time: concurrent ones wait for it and then go
 * together, which is what makes the groups form under load. One that has not returned
 * within a second is presumed stuck and no longer holds the others up.
 */
const GROUP_LIMITS = { maxInFlight: 1, maxSize: 100, stalledAfterMs: 1000 };

function earliest(requests: readonly { deadline?: number }[]): number | undefined {
  const deadlines = requests.flatMap((request) => (request.deadline === undefined ? [] : [request.deadline]));
  return deadlines.length > 0 ? Math.min(...deadlines) : undefined;
}

/** Whether `source` is a TypeORM DataSource rather than a node-postgres Pool. */
function isDataSource(source: DataSource | PgPool): source is DataSource {
  return typeof (source as Partial<DataSource>).createQueryRunner === 'function';
}

/** The pool a source's connections come from, refusing what is neither a postgres DataSource nor a Pool. */
function poolOf(source: DataSource | PgPool): Pool {
  if (isDataSource(source)) {
    if (source.options.type !== 'postgres') {
      throw new Error(
        `IdempotencyModule: the DataSource is of type "${source.options.type}"; ` +
          'the PostgreSQL store needs a DataSource of type "postgres".',
      );
    }
    // The driver's pool exists once the DataSource is initialised, which
    // TypeOrmModule does before any provider that injects it is created.
    return (source.driver as unknown as { master: Pool }).master;
  }
  const pool = source as unknown as Partial<Pool> & { totalCount?: unknown };
  // A pg.Client has connect() and query() too, but it is one connection: concurrent
  // requests would share one transaction. A Pool counts its clients.
  if (
    typeof pool?.connect !== 'function' ||
    typeof pool.query !== 'function' ||
    typeof pool.on !== 'function' ||
    typeof pool.totalCount !== 'number'
  ) {
    throw new Error('IdempotencyModule: "pool" must be a node-postgres Pool (new Pool() of the "pg" package).');
  }
  return pool as Pool;
}

/**
 * The PostgreSQL store: records in the `idempotency_keys` table, on the application's
 * TypeORM DataSource or on a node-postgres Pool. Either way it talks to the node-postgres
 * pool directly, without a TypeORM QueryRunner per call; a DataSource adds its
 * EntityManager (and subscribers) to transactional requests. Lease-mode claims and completions that arrive together share
 * a statement (group commit); a transactional request's own statements take two round trips.
 */
export class PostgresIdempotencyStore extends IdempotencyStore {
  private readonly pool: Pool;
  /** Lease-mode claims' fast path and completions, a statement per group of concurrent ones. */
  private readonly claims: GroupedStatements<ClaimRequest, ClaimResult | undefined>;
  private readonly completions: GroupedStatements<Completion, boolean>;
  /** Look-ups (replays, before a transactional claim), a statement per group of concurrent ones. */
  private readonly finds: GroupedStatements<Lookup, IdempotencyRecord | null>;

  private readonly names: ReadonlyMap<string, string>;

  /** The TypeORM DataSource it runs on; undefined on a plain pool. */
  private readonly dataSource: DataSource | undefined;

  /**
   * @param source the application's TypeORM DataSource (of type "postgres"), or a
   *   node-postgres `Pool`, which the application keeps and ends.
   */
  constructor(
    source: DataSource | PgPool,
    private readonly options: PostgresStoreOptions = {},
  ) {
    super();
    this.pool = poolOf(source);
    this.dataSource = isDataSource(source) ? source : undefined;
    guardClients(this.pool);
    watchSecondConnections(this.pool);
    this.names = options.preparedStatements === false ? new Map() : PREPARED_NAMES;
    this.claims = new GroupedStatements({
      one: (request) => this.withClient(request.deadline, (client) => claimFast(client, request)),
      // The group waits for a connection until the earliest of its deadlines.
      // Claims of one key share a statement too (replays of a hot key must not queue): it tells the winner.
      many: (requests) => this.withClient(earliest(requests), (client) => claimFastMany(client, requests)),
      ...GROUP_LIMITS,
    });
    this.finds = new GroupedStatements({
      one: async ({ identity, deadline }) => {
        const { rows } = await this.withClient(deadline, (client) =>
          client.query(SQL_FIND, identityParameters(identity)),
        );
        return rows[0] ? toRecord(rows[0]) : null;
      },
      many: (lookups) => this.withClient(earliest(lookups), (client) => findMany(client, lookups)),
      ...GROUP_LIMITS,
    });
    this.completions = new GroupedStatements({
      one: (completion) => this.withClient(undefined, (db) => completeOn(db, completion)),
      many: (completions) => this.withClient(undefined, (db) => completeMany(db, completions)),
      identity: (completion) => identityKey(completion.identity),
      ...GROUP_LIMITS,
    });
  }

  async claim(request: ClaimRequest): Promise<ClaimResult> {
    const fast = await this.claims.run(request);
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
    const host = await this.transactionHost(deadline);
    // BEGIN travels with the claim, in the transaction's first round trip.
    const { isolationLevel } = (this.dataSource?.options ?? {}) as { isolationLevel?: string };
    try {
      return new PostgresStoreTransaction(host, {
        isolationLevel,
        prepared: this.options.preparedStatements !== false,
      });
    } catch (error) {
      await host.release(false);
      throw error;
    }
  }

  /** A connection for a transaction, waited for until `deadline` at most. */
  private async transactionHost(deadline: number | undefined): Promise<TransactionHost> {
    if (!this.dataSource) return new PoolTransactionHost(await this.connect(deadline));
    const runner = this.dataSource.createQueryRunner();
    try {
      const client = (await withinDeadline(runner.connect(), deadline, () => void runner.release())) as PoolClient;
      return new TypeOrmTransactionHost(runner, client);
    } catch (error) {
      // After a time-out, the connection is released when (if ever) the pool hands it over.
      if (!(error instanceof PoolTimeoutError)) await runner.release();
      throw error;
    }
  }

  /** A pooled connection, waited for until `deadline` at most (one that comes later goes back). */
  private connect(deadline: number | undefined): Promise<PoolClient> {
    return withinDeadline(this.pool.connect(), deadline, (late) => late.release());
  }

  /**
   * Runs `work` on a pooled connection that has an 'error' listener for as long as it is
   * held (node-postgres emits 'error' on a checked-out client whose connection drops, which
   * would otherwise end the process). Acquiring it is bounded by `deadline`. A client whose
   * work failed is discarded rather than returned to the pool.
   */
  private async withClient<T>(deadline: number | undefined, work: (client: Queryable) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.connect(deadline);
      let broken: Error | undefined;
      const onError = (error: Error) => (broken = error);
      client.on('error', onError);
      try {
        return await work(attempt === 0 ? preparing(client, this.names) : client);
      } catch (error) {
        broken ??= error as Error;
        // Its session lost the prepared statements (reset under us): the connection is
        // discarded below, and the work runs again, once, on another, unprepared: a reset
        // (DISCARD ALL, a pooler's) may have reached the other idle connections too.
        if ((error as { code?: string }).code === PREPARED_STATEMENT_MISSING && attempt === 0) continue;
        throw error;
      } finally {
        client.removeListener('error', onError);
        client.release(broken);
      }
    }
  }

  async complete(
    identity: RecordIdentity,
    ownerToken: string,
    response: ResponsePayload,
    ttlMs: number,
  ): Promise<boolean> {
    return this.completions.run({ identity, ownerToken, text: responseText(response), ttlMs });
  }

  async release(identity: RecordIdentity, ownerToken: string): Promise<boolean> {
    const { rowCount } = await this.withClient(undefined, (db) =>
      db.query(SQL_RELEASE, [...identityParameters(identity), ownerToken]),
    );
    return rowCount === 1;
  }

  async renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean> {
    const { rowCount } = await this.withClient(undefined, (db) =>
      db.query(SQL_RENEW, [...identityParameters(identity), ownerToken, leaseMs]),
    );
    return rowCount === 1;
  }

  find(identity: RecordIdentity, deadline?: number): Promise<IdempotencyRecord | null> {
    return this.finds.run({ identity, deadline });
  }

  override async releaseRecord(identity: RecordIdentity): Promise<boolean> {
    return (await operator.releaseRecord(this.pool, identity)) !== null;
  }

  override deleteRecord(identity: RecordIdentity): Promise<RecordStatus | null> {
    return operator.deleteRecord(this.pool, identity);
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
    for (const { table, sql } of SQL_VERIFY) {
      try {
        await this.pool.query(sql);
      } catch (error) {
        if ((error as { code?: string }).code === '42P01') {
          const fix = this.dataSource
            ? 'Add the exported idempotencyMigrations to your DataSource "migrations" and run them'
            : 'Run "npx nestjs-idempotency-postgres migrate", or apply the package\'s sql/idempotency.sql ' +
              'with your migration tool';
          throw new Error(`IdempotencyModule: table "${table}" does not exist. ${fix} (see the README).`);
        }
        throw error;
      }
    }
  }
}
