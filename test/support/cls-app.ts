import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import {
  ClsPluginTransactional,
  InjectTransactionHost,
  Transactional,
  TransactionHost,
} from '@nestjs-cls/transactional';
import { TransactionalAdapterTypeOrm } from '@nestjs-cls/transactional-adapter-typeorm';
import { ClsModule } from 'nestjs-cls';
import { DataSource } from 'typeorm';
import { IdempotencyModule, IdempotencyService, IdempotentTransactionalAdapterTypeOrm } from '../../lib/index.js';
import { EFFECT_INSERT } from './effects.js';

/*
 * An application that writes through @nestjs-cls/transactional, run as a process of its
 * own: nestjs-cls is CommonJS and requires @nestjs/common, which NestJS 12 ships as ES
 * modules only; Node loads that (require of ES modules), Jest's module system does not.
 * Usage: node cls-app.js <scenario> <key> [<scenario> <key> ...] with DATABASE_URL set;
 * prints one JSON line per scenario: its outcome, or the error it threw.
 */

/** A service written for @nestjs-cls/transactional, unaware of idempotency. */
@Injectable()
class Ledger {
  constructor(
    private readonly txHost: TransactionHost<IdempotentTransactionalAdapterTypeOrm>,
    @InjectTransactionHost('stock') private readonly stockHost: TransactionHost<TransactionalAdapterTypeOrm>,
  ) {}

  record(key: string): Promise<unknown> {
    return this.txHost.tx.query(EFFECT_INSERT, ['ledger', key]);
  }

  @Transactional()
  async recordTwice(key: string): Promise<void> {
    await this.txHost.tx.query(EFFECT_INSERT, ['ledger', key]);
    await this.txHost.tx.query(EFFECT_INSERT, ['ledger', key]);
  }

  /** The same write through the stock adapter: the control. */
  recordStock(key: string): Promise<unknown> {
    return this.stockHost.tx.query(EFFECT_INSERT, ['stock', key]);
  }
}

@Module({
  imports: [
    TypeOrmModule.forRoot({ type: 'postgres', url: process.env.DATABASE_URL }),
    ClsModule.forRoot({
      global: true,
      plugins: [
        new ClsPluginTransactional({
          adapter: new IdempotentTransactionalAdapterTypeOrm({ dataSourceToken: DataSource }),
        }),
        new ClsPluginTransactional({
          connectionName: 'stock',
          adapter: new TransactionalAdapterTypeOrm({ dataSourceToken: DataSource }),
        }),
      ],
    }),
    IdempotencyModule.forRoot(),
  ],
  providers: [Ledger],
})
class ClsApp {}

// Warnings go to stdout as JSON lines, in order with the scenarios' outcomes.
const logger = {
  log: () => {},
  error: (message: unknown) => console.error(String(message)),
  warn: (message: unknown) => console.log(JSON.stringify({ warning: String(message) })),
};
const app = await NestFactory.createApplicationContext(ClsApp, { logger });
const service = app.get(IdempotencyService);
const ledger = app.get(Ledger);

/** A transactional operation that writes through `work`, then fails or not. */
const charge = (key: string, work: () => Promise<unknown>, fail: boolean) =>
  service.run({ key, name: 'charge', transactional: true }, async () => {
    await work();
    if (fail) throw new Error('failed after the write');
    return 'charged';
  });

const scenarios: Record<string, (key: string) => Promise<unknown>> = {
  record: (key) => charge(key, () => ledger.record(key), false),
  'record-fail': (key) => charge(key, () => ledger.record(key), true),
  twice: (key) => charge(key, () => ledger.recordTwice(key), false),
  'twice-fail': (key) => charge(key, () => ledger.recordTwice(key), true),
  'stock-fail': (key) => charge(key, () => ledger.recordStock(key), true),
  outside: (key) => ledger.record(key),
  'lease-fail': (key) =>
    service.run({ key, name: 'lease' }, async () => {
      await ledger.record(key);
      throw new Error('lease mode has no transaction to roll back');
    }),
};

const args = process.argv.slice(2);
try {
  for (let i = 0; i < args.length; i += 2) {
    const [scenario, key] = [args[i], args[i + 1]];
    try {
      const value = await scenarios[scenario](key);
      console.log(JSON.stringify({ scenario, key, value: value ?? null }));
    } catch (error) {
      console.log(JSON.stringify({ scenario, key, error: (error as Error).message }));
    }
  }
} finally {
  await app.close();
}
