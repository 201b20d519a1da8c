import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
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
import { ProblemFilter } from './problem.filter.js';

@Module({})
export class AppModule {
  /** `brokerModules`: the optional features that `loadBrokerFeatures()` loaded (see brokers.ts). */
  static forRoot(config: SampleConfig, brokerModules: DynamicModule[] = []): DynamicModule {
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
        }),
        ...brokerModules,
      ],
      controllers: [PaymentsController, EmailsController, PaymentIntentsController, HealthController],
      providers: [
        { provide: SAMPLE_CONFIG, useValue: config },
        { provide: APP_FILTER, useClass: ProblemFilter },
      ],
    };
  }
}
