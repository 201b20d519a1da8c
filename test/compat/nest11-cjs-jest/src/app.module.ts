import { type DynamicModule, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { IdempotencyModule, idempotencyMigrations } from 'nestjs-idempotency-postgres';
import { CreatePayments1767225600000 } from './migrations/1767225600000-create-payments';
import { OrdersController } from './orders.controller';
import { OrdersService } from './orders.service';
import { Payment } from './payment.entity';

@Module({})
export class AppModule {
  static forDatabase(url: string): DynamicModule {
    return {
      module: AppModule,
      imports: [
        TypeOrmModule.forRoot({
          type: 'postgres',
          url,
          entities: [Payment],
          migrations: [...idempotencyMigrations, CreatePayments1767225600000],
          migrationsRun: true,
          retryAttempts: 0,
        }),
        IdempotencyModule.forRoot({
          // No authentication in this app: the caller names itself.
          scope: (request) => String(request.headers['x-user-id'] ?? 'anonymous'),
        }),
      ],
      controllers: [OrdersController],
      providers: [OrdersService],
    };
  }
}
