import { InjectQueue } from '@nestjs/bullmq';
import { Injectable, Logger } from '@nestjs/common';
import { Interval } from '@nestjs/schedule';
import type { Queue } from 'bullmq';
import { currentIdempotentCall, IdempotentMethod } from '../../lib/index.js';
import { settlementIntervalFromEnv } from '../config.js';
import { SETTLEMENT_QUEUE, type SettlementJob, settlementJobId } from './settlement-job.js';
import { RedisErrorLog } from './redis-errors.js';

/**
 * Decorators take their arguments when the class is defined: the interval is read from
 * the environment when this file is imported, which happens only when REDIS_URL is set.
 */
const INTERVAL_MS = settlementIntervalFromEnv();
/** How long enqueueing may take: with Redis down, the client would queue the command until it is back. */
const ENQUEUE_TIMEOUT_MS = Math.min(INTERVAL_MS, 10_000);

/**
 * Every instance's timer fires once per interval; `@IdempotentMethod()` keys each call by
 * its tick (the interval's window it falls in), so the tick runs on the first instance to
 * fire and the others skip it. The tick enqueues one settlement job, whose id is derived
 * from the tick, so even a tick run twice (its claim lost) would enqueue one job.
 */
@Injectable()
export class SettlementScheduler {
  private readonly logger = new Logger('Settlements');

  constructor(@InjectQueue(SETTLEMENT_QUEUE) private readonly queue: Queue<SettlementJob>) {
    queue.on('error', new RedisErrorLog(this.logger).log);
  }

  @IdempotentMethod()
  @Interval('settlement', INTERVAL_MS)
  async tick(): Promise<void> {
    // The tick this call was claimed for: the clock, read again here, may be in the next one.
    const tick = currentIdempotentCall()!.tick!;
    const jobId = settlementJobId(tick);
    await withTimeout(
      this.queue.add(
        'settle',
        { tick: tick.toISOString(), intervalMs: INTERVAL_MS },
        {
          jobId,
          // A failed settlement (the database down) is retried; the processor is idempotent per job id.
          attempts: 5,
          backoff: { type: 'exponential', delay: 1000 },
          removeOnComplete: { age: 24 * 60 * 60 },
          removeOnFail: { age: 7 * 24 * 60 * 60 },
        },
      ),
      ENQUEUE_TIMEOUT_MS,
    );
    this.logger.log(`tick ${tick.toISOString()}: job ${jobId} enqueued`);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
