import { type Job, Queue } from 'bullmq';
import { randomUUID } from 'node:crypto';
import { BROKER_URLS } from './brokers.js';
import { waitFor } from './cluster.js';
import { redisConnection } from './redis.js';

/**
 * The queues of one test file, under a BullMQ prefix of their own: the Redis server is
 * shared with whoever else runs tests on this machine. `close()` removes every key under
 * the prefix.
 */
export class TestQueues {
  readonly prefix = `idempotency-test-${randomUUID()}`;
  private readonly connection = redisConnection(BROKER_URLS.redis);
  private readonly queues: Queue[] = [];

  /** A queue of this run; its name is unique too, so that each test has its own. */
  queue(label: string): Queue {
    const queue = new Queue(`${label}-${randomUUID()}`, { connection: this.connection, prefix: this.prefix });
    this.queues.push(queue);
    return queue;
  }

  /** The job once it has completed, or failed with no attempt left. */
  async settled(queue: Queue, id: string, timeoutMs = 60_000): Promise<Job> {
    await waitFor(
      async () => ['completed', 'failed'].includes(await queue.getJobState(id)),
      `job ${id} of ${queue.name} to complete or fail`,
      timeoutMs,
    );
    return (await queue.getJob(id))!;
  }

  async close(): Promise<void> {
    for (const queue of this.queues) {
      await queue.obliterate({ force: true });
      await queue.close();
    }
    // What obliterate() leaves (worker and stalled-check keys) goes too.
    let cursor = '0';
    do {
      const [next, keys] = await this.connection.scan(cursor, 'MATCH', `${this.prefix}:*`, 'COUNT', 1000);
      if (keys.length > 0) await this.connection.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    // quit() resolves on Redis' reply; the socket closes a moment later ('end').
    const ended = new Promise((resolve) => this.connection.once('end', resolve));
    await this.connection.quit();
    await ended;
  }
}
