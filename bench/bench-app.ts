import { Body, Controller, type DynamicModule, Get, Module, Post } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DataSource, type EntityManager } from 'typeorm';
import { Idempotent, IdempotencyModule, IdempotentManager } from '../lib/index.js';
import { Payment, paymentView } from '../sample-app/payments/payment.entity.js';

interface Charge {
  amount: number;
  currency: string;
}

/** Counters the bench server exposes: SQL round trips (server.ts) and requests answered. */
export const benchCounters = { queries: 0, requests: 0 };

/**
 * One payment handler behind three routes: without the library (the baseline), in lease
 * mode and in transactional mode. The handler is the same code; only the EntityManager it
 * writes through differs (transactional mode hands it the request's transaction).
 */
@Controller()
class BenchController {
  constructor(private readonly dataSource: DataSource) {}

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
  static forRoot(url: string): DynamicModule {
    return {
      module: BenchModule,
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url, entities: [Payment], extra: { max: 10 } }),
        IdempotencyModule.forRoot({ scope: (request) => String(request.headers['x-user-id'] ?? 'bench') }),
      ],
      controllers: [BenchController],
    };
  }
}
