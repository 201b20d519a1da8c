import 'reflect-metadata';
import { BullModule, Processor, WorkerHost } from '@nestjs/bullmq';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { Job } from 'bullmq';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataSource, type EntityManager } from 'typeorm';
import {
  IdempotencyModule,
  IdempotentMethod,
  type IdempotentMethodOptions,
  IdempotentTransaction,
  PostgresIdempotencyStore,
} from '../../lib/index.js';
import { EFFECT_INSERT } from './effects.js';
import { redisConnection } from './redis.js';

/**
 * A BullMQ worker application for test/e2e/jobs.spec.ts, run as a process of its own.
 *
 * Env: DATABASE_URL, REDIS_URL; BULL_PREFIX and QUEUE (the queue it works on);
 * WORKER_NAME (BullMQ's `processedBy` of the jobs it finishes). GUARD=off runs the same
 * code without `@IdempotentMethod()` (the control). HANG=on makes it stop where a
 * charge's `hang` says, for the test to kill it there. SLOW_START_MS delays
 * IdempotencyModule's start-up check of the database (a database slow to answer while
 * the application starts), so that the worker surely takes jobs before that module is
 * initialised.
 */
const env = process.env;
const guarded = env.GUARD !== 'off';
const hangs = env.HANG === 'on';
const workerName = env.WORKER_NAME ?? `worker-${process.pid}`;
/** BullMQ's job lock: short, so that a killed worker's jobs are found stalled soon (looked for every half of it). */
const lockDuration = 1000;

/** A charge, keyed by its BullMQ job id; each `fail` flag fails the first attempt at that point. */
export interface ChargeData {
  failBeforeEffect?: boolean;
  failAfterEffect?: boolean;
  failAfterReturn?: boolean;
  /**
   * Where a worker started with HANG=on stops: inside the method, after the write and
   * before the commit; or after the method returned (committed), before BullMQ completes
   * the job.
   */
  hang?: 'inside' | 'after-return';
}

/** An order, keyed by its business id whatever the job's id: two jobs for one order are one order. */
export interface OrderData {
  orderId: string;
  amount: number;
}

/** The PostgreSQL store, with its start-up check delayed by SLOW_START_MS. */
@Injectable()
class SlowStartStore extends PostgresIdempotencyStore {
  constructor(dataSource: DataSource) {
    super(dataSource);
  }

  override async verify(): Promise<void> {
    await sleep(Number(env.SLOW_START_MS));
    return super.verify();
  }
}

/** `@IdempotentMethod()`, or nothing at all for the control run. */
const Guarded = (options: IdempotentMethodOptions): MethodDecorator =>
  guarded ? (IdempotentMethod(options) as MethodDecorator) : () => undefined;

/** Prints a line the test waits for, then never settles: the test kills the process here. */
async function hangHere(line: string): Promise<never> {
  console.log(line);
  return new Promise<never>(() => {});
}

@Processor(env.QUEUE!, { name: workerName, concurrency: 4, lockDuration, stalledInterval: lockDuration / 2 })
class Payments extends WorkerHost {
  constructor(
    private readonly dataSource: DataSource,
    private readonly transaction: IdempotentTransaction,
  ) {
    super();
  }

  async process(job: Job): Promise<unknown> {
    const result = job.name === 'order' ? await this.placeOrder(job) : await this.charge(job);
    const data = job.data as ChargeData;
    // Something after the effect fails (a notification, say): BullMQ runs the whole job again.
    if (data.failAfterReturn && job.attemptsMade === 0) throw new Error('failed after the charge returned');
    if (hangs && data.hang === 'after-return') await hangHere(`returned ${job.id}`);
    return result;
  }

  @Guarded({ key: (job: Job) => job.id, transactional: true })
  async charge(job: Job<ChargeData>): Promise<{ charged: string; by: string }> {
    const first = job.attemptsMade === 0;
    if (job.data.failBeforeEffect && first) throw new Error('failed before the charge');
    await this.writer().query(EFFECT_INSERT, ['charge', job.id]);
    if (job.data.failAfterEffect && first) throw new Error('failed after the charge was written');
    if (hangs && job.data.hang === 'inside') await hangHere(`inside ${job.id}`);
    return { charged: job.id!, by: workerName };
  }

  @Guarded({
    key: (job: Job<OrderData>) => job.data.orderId,
    payload: (job: Job<OrderData>) => job.data.amount,
    concurrency: 'wait',
  })
  async placeOrder(job: Job<OrderData>): Promise<{ order: string; placedBy: string }> {
    await this.dataSource.query(EFFECT_INSERT, ['order', job.data.orderId]);
    // Holds the key a while, so that duplicates taken by the other slots of this worker
    // arrive while it is in progress: the case `concurrency: 'wait'` is for.
    await sleep(200);
    return { order: job.data.orderId, placedBy: job.id! };
  }

  /** The method's transaction when guarded (its writes commit with the stored result); a plain connection otherwise. */
  private writer(): EntityManager {
    return guarded ? this.transaction.manager : this.dataSource.manager;
  }
}

async function main(): Promise<void> {
  const connection = redisConnection(env.REDIS_URL!);
  @Module({
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url: env.DATABASE_URL, extra: { max: 10 } }),
      // BullModule first: its workers then start (in its onModuleInit) before IdempotencyModule
      // is initialised, and take waiting jobs at once (the start-up test of jobs.spec.ts).
      BullModule.forRoot({ connection, prefix: env.BULL_PREFIX }),
      BullModule.registerQueue({ name: env.QUEUE! }),
      IdempotencyModule.forRoot({
        fingerprintSecret: 'job worker secret for the tests',
        store: env.SLOW_START_MS ? SlowStartStore : undefined,
      }),
    ],
    providers: [Payments],
  })
  class WorkerModule {}

  const app = await NestFactory.createApplicationContext(WorkerModule, { logger: ['error', 'warn'] });
  console.log('ready');
  process.once('SIGTERM', () => {
    void app
      .close()
      .then(() => connection.quit())
      .then(() => process.exit(0));
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
