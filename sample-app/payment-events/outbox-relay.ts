import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { MESSAGING_CONFIG, type MessagingConfig } from '../config.js';
import { AmqpPublisher, type OutgoingMessage } from './amqp-publisher.js';

/** How often the outbox is looked at: the delay between a payment's commit and its event. */
const POLL_MS = 250;
const BATCH_SIZE = 100;
/** Back-off while RabbitMQ (or the database) fails: doubling from the first to the second. */
const RETRY_MS = [500, 30_000] as const;

/**
 * Publishes what the outbox holds, oldest first, and deletes it once RabbitMQ has
 * confirmed it. Every instance runs one; `SKIP LOCKED` gives each row to one of them.
 *
 * Delivery is at least once: a relay that dies between the broker's confirm and its
 * commit leaves the rows, and they are published again. The consumer is idempotent on
 * the message id, so a repeat is acknowledged, not applied twice.
 *
 * While RabbitMQ is down, payments go on and their events wait in the outbox: one line
 * says so when it starts and one when it is over, and the relay retries with back-off.
 */
@Injectable()
export class OutboxRelay implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('OutboxRelay');
  private readonly publisher: AmqpPublisher;
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private failures = 0;
  private retryAt = 0;

  constructor(
    private readonly dataSource: DataSource,
    @Inject(MESSAGING_CONFIG) config: MessagingConfig,
  ) {
    this.publisher = new AmqpPublisher(config.url, config.queue);
  }

  onApplicationBootstrap(): void {
    this.timer = setInterval(() => {
      if (this.running || Date.now() < this.retryAt) return;
      this.running = this.relay().finally(() => (this.running = undefined));
    }, POLL_MS);
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
    await this.publisher.close();
  }

  private async relay(): Promise<void> {
    try {
      let published = 0;
      let batch: number;
      do {
        batch = await this.publishBatch();
        published += batch;
      } while (batch === BATCH_SIZE);
      if (this.failures > 0) this.logger.log(`publishing again; ${published} waiting payment events published`);
      this.failures = 0;
    } catch (error) {
      if (this.failures === 0) {
        this.logger.warn(
          `cannot publish payment events (${error instanceof Error ? error.message : String(error)}); ` +
            `they wait in the outbox (${await this.waiting()} now), retried with back-off`,
        );
      }
      this.failures++;
      this.retryAt = Date.now() + Math.min(RETRY_MS[1], RETRY_MS[0] * 2 ** (this.failures - 1));
    }
  }

  /** One batch in one transaction: its rows stay locked, and are deleted only once confirmed. */
  private publishBatch(): Promise<number> {
    return this.dataSource.transaction(async (manager) => {
      const rows = await manager.query<Array<OutgoingMessage & { id: string }>>(
        `SELECT id, pattern, message_id AS "messageId", payload FROM outbox
          ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [BATCH_SIZE],
      );
      if (rows.length === 0) return 0;
      await this.publisher.publish(rows);
      await manager.query('DELETE FROM outbox WHERE id = ANY($1)', [rows.map((row) => row.id)]);
      return rows.length;
    });
  }

  private async waiting(): Promise<string> {
    try {
      const [{ n }] = await this.dataSource.query<Array<{ n: number }>>('SELECT count(*)::int AS n FROM outbox');
      return String(n);
    } catch {
      return 'unknown';
    }
  }
}
