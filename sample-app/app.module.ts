import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { Pool } from 'pg';
import { IdempotencyModule } from '../lib/index.js';
import { callerOf } from './caller.guard.js';
import { SAMPLE_CONFIG, type SampleConfig } from './config.js';
import { Email } from './emails/email.entity.js';
import { EmailsController } from './emails/emails.controller.js';
import { HealthController } from './health.controller.js';
import { sampleMigrations } from './migrations/index.js';
import { PaymentIntentsController } from './payment-intents.controller.js';
import { Payment } from './payments/payment.entity.js';
import { PaymentsController } from './payments/payments.controller.js';
import { EntityManagerPaymentWriter, PaymentWriter, PoolClientPaymentWriter } from './payments/payment-writer.js';
import { ProblemFilter } from './problem.filter.js';

@Module({})
export class AppModule {
  /**
   * `brokerModules`: the optional features that `loadBrokerFeatures()` loaded (see brokers.ts).
   * `idempotencyPool`: with `IDEMPOTENCY_STORE=pool`, the pg Pool the library runs on (see
   * idempotency-pool.ts); the caller ends it after the app has closed.
   */
  static forRoot(config: SampleConfig, brokerModules: DynamicModule[] = [], idempotencyPool?: Pool): DynamicModule {
    if ((config.idempotencyStore === 'pool') !== (idempotencyPool !== undefined)) {
      throw new Error('AppModule: give an idempotency pool with IDEMPOTENCY_STORE=pool, and only then');
    }
    return {
      module: AppModule,
      imports: [
        TypeOrmModule.forRoot({
          type: 'postgres',
          url: config.databaseUrl,
          entities: [Payment, Email],
          // The broker features register their own entities (TypeOrmModule.forFeature).
          autoLoadEntities: true,
          // The library's migration is added like any other of the application's.
          migrations: sampleMigrations,
          migrationsRun: true,
          synchronize: false,
          retryAttempts: 3,
        }),
        TypeOrmModule.forFeature([Payment, Email]),
        IdempotencyModule.forRoot({
          // Keys are scoped per caller: another user's key opens nothing.
          scope: (request: { headers: Record<string, unknown> }) => callerOf(request),
          leaseMs: config.leaseMs,
          waitTimeoutMs: config.waitTimeoutMs,
          ttlMs: config.ttlMs,
          purgeIntervalMs: 10 * 60 * 1000,
          metrics: config.metrics,
          ...(config.idempotencyStore === 'redis' && {
            // Lease-mode routes in Redis; the transactional ones (POST /payments, the
            // receipts consumer, the settlement job) keep their records in PostgreSQL.
            redis: {
              connection: config.settlements!.redisUrl,
              keyPrefix: `${config.settlements!.prefix}:idempotency:`,
              transactionalRoutes: 'postgres',
            },
          }),
          // The records stay in idempotency_keys (created by the migrations above), reached
          // through this pool rather than the DataSource; there is no EntityManager then.
          ...(idempotencyPool && { pool: idempotencyPool }),
        }),
        ...brokerModules,
      ],
      controllers: [PaymentsController, EmailsController, PaymentIntentsController, HealthController],
      providers: [
        { provide: SAMPLE_CONFIG, useValue: config },
        { provide: APP_FILTER, useClass: ProblemFilter },
        // The one place that knows which store runs: the controller only asks for a writer.
        {
          provide: PaymentWriter,
          useClass: idempotencyPool ? PoolClientPaymentWriter : EntityManagerPaymentWriter,
        },
      ],
    };
  }
}
