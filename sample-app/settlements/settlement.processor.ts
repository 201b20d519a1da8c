import { OnWorkerEvent, Processor, WorkerHost } from '@nestjs/bullmq';
import { Logger, type OnApplicationBootstrap } from '@nestjs/common';
import type { Job } from 'bullmq';
import { IdempotentMethod, IdempotentTransaction } from '../../lib/index.js';
import { RedisErrorLog } from './redis-errors.js';
import { Settlement } from './settlement.entity.js';
import { SETTLEMENT_QUEUE, type SettlementJob } from './settlement-job.js';

/**
 * Settles one tick: counts the payments of the interval before it, in one `settlements`
 * row. BullMQ delivers a job at least once (a worker that stalls or dies mid-job has it
 * run again), so the work is keyed by the job's id: a second run of a settled job returns
 * the stored result and writes nothing.
 *
 * The worker starts once the application is bootstrapped, so that no job runs before the
 * idempotency module is ready.
 */
@Processor(SETTLEMENT_QUEUE, { autorun: false })
export class SettlementProcessor extends WorkerHost implements OnApplicationBootstrap {
  private readonly logger = new Logger('Settlements');
  private readonly redisErrors = new RedisErrorLog(this.logger);

  constructor(private readonly transaction: IdempotentTransaction) {
    super();
  }

  onApplicationBootstrap(): void {
    this.worker.run().catch((error: unknown) => this.logger.error(`the settlement worker stopped: ${String(error)}`));
  }

  /** Registered with the worker as it is created, before it first connects. */
  @OnWorkerEvent('error')
  onWorkerError(error: Error): void {
    this.redisErrors.log(error);
  }

  /** Transactional: the row and the job's idempotency record commit together. */
  @IdempotentMethod({ key: (job: Job) => job.id, transactional: true, concurrency: 'wait' })
  async process(job: Job<SettlementJob>): Promise<{ payments: number }> {
    this.logger.log(`job ${job.id}: settling tick ${job.data.tick}`);
    const tick = new Date(job.data.tick);
    const { manager } = this.transaction;
    const [{ payments }] = await manager.query<Array<{ payments: number }>>(
      'SELECT count(*)::int AS payments FROM payments WHERE created_at >= $1 AND created_at < $2',
      [new Date(tick.getTime() - job.data.intervalMs), tick],
    );
    await manager.insert(Settlement, { tick, jobId: job.id!, paymentCount: payments });
    return { payments };
  }
}
