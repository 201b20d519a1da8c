import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { type INestApplicationContext, type LoggerService, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { IdempotencyModule, IdempotencyService } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, EFFECT_INSERT, effectCount } from '../support/effects.js';

class KeptLogger implements LoggerService {
  readonly warnings: string[] = [];
  log() {}
  error() {}
  warn(message: unknown) {
    this.warnings.push(String(message));
  }
}

/** A write on another connection than the transaction's, in a transactional operation, is reported with its name. */
describe('writes outside the idempotency transaction', () => {
  let db: TestDatabase;
  let app: INestApplicationContext;
  let service: IdempotencyService;
  let dataSource: DataSource;
  const logger = new KeptLogger();
  const reported = (operation: string) =>
    logger.warnings.filter((line) => line.startsWith(`call ${operation}: a second database connection was taken`));

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    @Module({ imports: [TypeOrmModule.forRoot({ type: 'postgres', url: db.url }), IdempotencyModule.forRoot()] })
    class OutsideApp {}
    app = await NestFactory.createApplicationContext(OutsideApp, { logger });
    service = app.get(IdempotencyService);
    dataSource = app.get(DataSource);
  });

  afterAll(async () => {
    await app?.close();
    await db?.drop();
  });

  it('a write through the DataSource in a transactional operation is logged with the operation, and is not rolled back', async () => {
    const key = randomUUID();
    await expect(
      service.run({ key, name: 'refund', transactional: true }, async () => {
        await dataSource.query(EFFECT_INSERT, ['outside', key]);
        throw new Error('fails after the write');
      }),
    ).rejects.toThrow('fails after the write');
    expect(reported('refund')).toHaveLength(1);
    expect(await effectCount(db.pool, 'outside', key)).toBe(1); // what the warning is about
  });

  it('writes through the handed manager, and lease-mode operations, are not reported', async () => {
    const key = randomUUID();
    await service.run({ key, name: 'inside', transactional: true }, (manager) =>
      manager.query(EFFECT_INSERT, ['inside', key]),
    );
    await service.run({ key, name: 'lease' }, () => dataSource.query(EFFECT_INSERT, ['lease', key]));
    expect(await effectCount(db.pool, 'inside', key)).toBe(1);
    expect(reported('inside')).toEqual([]);
    expect(reported('lease')).toEqual([]);
  });
});
