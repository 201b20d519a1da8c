import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DataSource } from 'typeorm';
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
import { guardClients, type Pool, type PoolClient, PoolTimeoutError, withinDeadline } from './postgres/connection.js';
import {
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
import { claimFast, claimUnderLock, completeOn, identityParameters, toRecord } from './postgres/statements.js';
import * as operator from './postgres/operator.js';
import { watchSecondConnections } from './postgres/second-connections.js';
import { PostgresStoreTransaction } from './postgres/transaction.js';

export { IDEMPOTENCY_TABLE } from './postgres/sql.js';

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
    watchSecondConnections(this.pool);
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
