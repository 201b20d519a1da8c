import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { Controller, Inject, Module, Param, Post } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import type { PoolClient } from 'pg';
import { Idempotent, IdempotencyModule, IdempotentClient, RedisIdempotencyStore } from '../../lib/index.js';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { deleteKeys } from '../support/redis-store.js';
import { type RunningApp, startApp } from '../support/test-app.js';

const describeRedis = await describeWithBrokers(['redis']);

const EFFECTS = 'CREATE TABLE split_effects (id serial PRIMARY KEY, owner text NOT NULL, kind text NOT NULL)';

@Controller('split')
class SplitController {
  constructor(@Inject(pg.Pool) private readonly pool: pg.Pool) {}

  @Post('lease/:owner')
  @Idempotent()
  async lease(@Param('owner') owner: string) {
    await this.pool.query("INSERT INTO split_effects (owner, kind) VALUES ($1, 'lease')", [owner]);
    return { owner };
  }

  @Post('tx/:owner')
  @Idempotent({ transactional: true })
  async tx(@Param('owner') owner: string, @IdempotentClient() client: PoolClient) {
    await client.query("INSERT INTO split_effects (owner, kind) VALUES ($1, 'tx')", [owner]);
    return { owner };
  }
}

/**
 * Redis for lease-mode routes beside PostgreSQL on a plain pool for the transactional
 * ones (`redis.transactionalRoutes: 'postgres'` with `pool`): each record where its mode
 * puts it, and no TypeORM.
 */
describeRedis('Redis store beside PostgreSQL on a pg Pool', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  let redis: Redis;
  let running: RunningApp;
  const keyPrefix = `pool-split-${randomUUID().slice(0, 8)}:`;

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(EFFECTS);
    pool = new pg.Pool({ connectionString: db.url, max: 4 });
    redis = new Redis(BROKER_URLS.redis);
    @Module({
      imports: [
        IdempotencyModule.forRoot({
          scope: () => 'split',
          pool,
          redis: { connection: BROKER_URLS.redis, keyPrefix, transactionalRoutes: 'postgres' },
        }),
      ],
      controllers: [SplitController],
      providers: [{ provide: pg.Pool, useValue: pool }],
    })
    class SplitModule {}
    running = await startApp(SplitModule, 'express');
  });

  afterAll(async () => {
    await running?.close();
    await pool?.end();
    await deleteKeys(redis, keyPrefix);
    await redis?.quit();
    await db?.drop();
  });

  it('keeps the lease-mode record in Redis and the transactional one in idempotency_keys, each run once', async () => {
    const owner = 'owner-' + randomUUID().slice(0, 8);
    const leaseKey = randomUUID();
    const txKey = randomUUID();
    for (let i = 0; i < 2; i++) {
      expect((await post(running.url, `/split/lease/${owner}`, { key: leaseKey })).status).toBe(201);
      expect((await post(running.url, `/split/tx/${owner}`, { key: txKey })).status).toBe(201);
    }
    const { rows } = await db.pool.query('SELECT kind FROM split_effects WHERE owner = $1 ORDER BY id', [owner]);
    expect(rows.map((row) => row.kind)).toEqual(['lease', 'tx']);
    const inPostgres = await db.pool.query('SELECT idempotency_key FROM idempotency_keys WHERE scope = $1', ['split']);
    expect(inPostgres.rows.map((row) => row.idempotency_key)).toEqual([txKey]);
    const store = new RedisIdempotencyStore(redis, { keyPrefix });
    expect(
      await store.find({ scope: 'split', method: 'POST', route: '/split/lease/:owner', key: leaseKey }),
    ).toMatchObject({ status: 'completed' });
  });
});
