import { afterAll, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { DataSource, type EntitySubscriberInterface, EventSubscriber } from 'typeorm';
import { IdempotencyModule, IdempotencyService } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, EFFECT_INSERT, effectCount } from '../support/effects.js';

/** What TypeORM told its subscribers of transactions, and an after-commit hook that can fail (an outbox relay whose broker is down). */
const seen: string[] = [];
let afterCommitFails = false;

@EventSubscriber()
class TransactionEvents implements EntitySubscriberInterface {
  beforeTransactionStart(): void {
    seen.push('beforeStart');
  }
  afterTransactionStart(): void {
    seen.push('afterStart');
  }
  beforeTransactionCommit(): void {
    seen.push('beforeCommit');
  }
  afterTransactionCommit(): void {
    seen.push('afterCommit');
    if (afterCommitFails) throw new Error('the outbox relay is down');
  }
  afterTransactionRollback(): void {
    seen.push('afterRollback');
  }
}

/*
 * A transactional operation begins and commits its transaction itself (BEGIN and COMMIT
 * travel with its own statements), and tells TypeORM's subscribers as TypeORM would. A
 * subscriber that throws after the commit must not cost the pool a connection.
 */
describe('transactional mode: TypeORM transaction events', () => {
  let db: TestDatabase;
  let context: INestApplicationContext;
  let service: IdempotencyService;
  let pool: pg.Pool;

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    @Module({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url, extra: { max: 3 }, subscribers: [TransactionEvents] }),
        IdempotencyModule.forRoot({ fingerprintSecret: 'a test secret of enough bytes', waitTimeoutMs: 1000 }),
      ],
    })
    class EventsModule {}
    const moduleRef = await Test.createTestingModule({ imports: [EventsModule] }).compile();
    context = await moduleRef.init();
    service = context.get(IdempotencyService);
    pool = (context.get(DataSource).driver as unknown as { master: pg.Pool }).master;
  });

  beforeEach(() => {
    seen.length = 0;
    afterCommitFails = false;
  });

  afterAll(async () => {
    await context?.close();
    await db?.drop();
  });

  const transfer = (key: string) =>
    service.run({ key, name: 'transfer', transactional: true }, async (manager) => {
      await manager.query(EFFECT_INSERT, ['transfer', key]);
      return { transferred: key };
    });

  it('tells subscribers of the start and the commit once each, in order', async () => {
    const key = randomUUID();
    expect(await transfer(key)).toEqual({ transferred: key });
    expect(seen).toEqual(['beforeStart', 'afterStart', 'beforeCommit', 'afterCommit']);
    expect(await effectCount(db.pool, 'transfer', key)).toBe(1);
  });

  it('returns every connection to the pool when an after-commit subscriber throws, and answers with the committed result', async () => {
    afterCommitFails = true;
    // More operations than the pool has connections: a connection kept by each would starve the later ones.
    const keys = Array.from({ length: 5 }, () => randomUUID());
    for (const key of keys) {
      expect(await transfer(key)).toEqual({ transferred: key });
      expect(await effectCount(db.pool, 'transfer', key)).toBe(1);
    }
    afterCommitFails = false;
    expect(await transfer(keys[0])).toEqual({ transferred: keys[0] });
    expect(await effectCount(db.pool, 'transfer', keys[0])).toBe(1);
    expect(pool.totalCount - pool.idleCount).toBe(0);
  });
});
