import {
  Body,
  Controller,
  type DynamicModule,
  Get,
  Inject,
  Module,
  type OnApplicationShutdown,
  Post,
} from '@nestjs/common';
import pg from 'pg';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DataSource, type EntityManager } from 'typeorm';
import { Idempotent, IdempotencyModule, IdempotentManager } from '../lib/index.js';
import { observabilityOptions } from './observability.js';
import { Payment, paymentView } from '../sample-app/payments/payment.entity.js';

interface Charge {
  amount: number;
  currency: string;
}

/** Counters the bench server exposes: SQL round trips (server.ts) and requests answered. */
export const benchCounters = { queries: 0, requests: 0 };

const PAYMENT_INSERT = `INSERT INTO payments (user_id, amount, currency, status) VALUES ('bench', $1, $2, 'succeeded') RETURNING id`;

/** The pool of the plain-INSERT handler: node-postgres alone, as an app without an ORM has it. */
const PLAIN_POOL = 'BENCH_PLAIN_POOL';

/**
 * Two payment handlers, each behind a baseline route (no library), a lease-mode route and
 * a transactional route: one saves the payment with TypeORM's save() (which opens a
 * transaction of its own), the other sends one INSERT through a pg pool (in transactional
 * mode, through the request's transaction). Only the connection they write through differs.
 */
@Controller()
class BenchController implements OnApplicationShutdown {
  constructor(
    private readonly dataSource: DataSource,
    @Inject(PLAIN_POOL) private readonly pool: pg.Pool,
  ) {}

  @Post('baseline/payments')
  baseline(@Body() body: Charge) {
    return this.charge(this.dataSource.manager, body);
  }

  @Post('lease/payments')
  @Idempotent()
  lease(@Body() body: Charge) {
    return this.charge(this.dataSource.manager, body);
  }

  @Post('tx/payments')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  transactional(@Body() body: Charge, @IdempotentManager() manager: EntityManager) {
    return this.charge(manager, body);
  }

  @Post('baseline/inserts')
  async baselineInsert(@Body() body: Charge) {
    const { rows } = await this.pool.query<{ id: string }>(PAYMENT_INSERT, [body.amount, body.currency]);
    return { id: rows[0].id };
  }

  @Post('lease/inserts')
  @Idempotent()
  leaseInsert(@Body() body: Charge) {
    return this.baselineInsert(body);
  }

  @Post('tx/inserts')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  async transactionalInsert(@Body() body: Charge, @IdempotentManager() manager: EntityManager) {
    const [row] = await manager.query<{ id: string }[]>(PAYMENT_INSERT, [body.amount, body.currency]);
    return { id: row.id };
  }

  async onApplicationShutdown(): Promise<void> {
    await this.pool.end();
  }

  /** What the runner reads between runs: this process's CPU time, memory and SQL round trips. */
  @Get('__bench/stats')
  stats() {
    const cpu = process.cpuUsage();
    const { queries, requests } = benchCounters;
    return { cpuMicros: cpu.user + cpu.system, rss: process.memoryUsage().rss, queries, requests };
  }

  private async charge(manager: EntityManager, body: Charge) {
    const payments = manager.getRepository(Payment);
    const payment = await payments.save(
      payments.create({
        userId: 'bench',
        amount: body.amount,
        currency: body.currency,
        cardLast4: null,
        status: 'succeeded',
      }),
    );
    return paymentView(payment);
  }
}

@Module({})
export class BenchModule {
  static forRoot(url: string, redis?: { url: string; prefix: string }): DynamicModule {
    return {
      module: BenchModule,
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url, entities: [Payment], extra: { max: 10 } }),
        IdempotencyModule.forRoot({
          scope: (request) => String(request.headers['x-user-id'] ?? 'bench'),
          // BENCH_REDIS_URL: lease-mode records in Redis; transactional ones stay in PostgreSQL.
          ...(redis && { redis: { connection: redis.url, keyPrefix: redis.prefix, transactionalRoutes: 'postgres' } }),
          ...observabilityOptions(),
        }),
      ],
      controllers: [BenchController],
      providers: [{ provide: PLAIN_POOL, useFactory: () => new pg.Pool({ connectionString: url, max: 10 }) }],
    };
  }
}
