import { type DynamicModule, Module } from '@nestjs/common';
import { IdempotencyModule } from 'nestjs-idempotency-postgres';
import pg from 'pg';
import { DatabaseModule } from './database.module.js';
import { PaymentsController, SETTINGS, type Settings } from './payments.controller.js';

@Module({})
export class AppModule {
  static forDatabase(url: string, settings: Settings = { holdMs: 0 }): DynamicModule {
    const database = DatabaseModule.forUrl(url);
    return {
      module: AppModule,
      imports: [
        database,
        IdempotencyModule.forRoot({
          // The store shares the application's pool: no TypeORM anywhere.
          pool: { useFactory: (pool: pg.Pool) => pool, inject: [pg.Pool], imports: [database] },
          // No authentication in this app: the caller names itself.
          scope: (request) => String(request.headers['x-user-id'] ?? 'anonymous'),
          leaseMs: 2_000,
          waitTimeoutMs: 5_000,
        }),
      ],
      controllers: [PaymentsController],
      providers: [{ provide: SETTINGS, useValue: settings }],
    };
  }
}
