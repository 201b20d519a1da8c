import amqp from 'amqplib';
import { randomBytes } from 'node:crypto';
import { BROKER_URLS } from './brokers.js';

/**
 * A queue of its own for one test file (other runs use the same broker at the same time),
 * with a publisher on a confirm channel: once `publish` resolves, the broker holds the
 * message.
 */
export class TestQueue {
  private constructor(
    readonly name: string,
    private readonly connection: amqp.ChannelModel,
    private readonly channel: amqp.ConfirmChannel,
  ) {}

  static async create(label: string): Promise<TestQueue> {
    const connection = await amqp.connect(BROKER_URLS.rabbitmq);
    const channel = await connection.createConfirmChannel();
    const name = `idempotency-e2e-${label}-${randomBytes(6).toString('hex')}`;
    // As the consumers declare it (Nest's server asserts the queue with these options).
    await channel.assertQueue(name, { durable: false });
    return new TestQueue(name, connection, channel);
  }

  /**
   * Publishes what Nest's RMQ server reads: `{ pattern, data }`, an event (a packet without
   * `id` gets no reply). `messageId` is the AMQP property the library keys messages by.
   */
  publishEvent(pattern: string, data: unknown, messageId?: string): Promise<void> {
    return this.publishEvents([{ pattern, data, messageId }]);
  }

  /** Publishes all at once, then waits for the broker's confirmations. */
  async publishEvents(events: Array<{ pattern: string; data: unknown; messageId?: string }>): Promise<void> {
    for (const { pattern, data, messageId } of events) {
      const body = Buffer.from(JSON.stringify({ pattern, data }));
      this.channel.sendToQueue(this.name, body, messageId === undefined ? {} : { messageId });
    }
    await this.channel.waitForConfirms();
  }

  /** Messages ready for delivery (not counting those delivered and not yet acknowledged). */
  async ready(): Promise<number> {
    return (await this.channel.checkQueue(this.name)).messageCount;
  }

  async consumers(): Promise<number> {
    return (await this.channel.checkQueue(this.name)).consumerCount;
  }

  async delete(): Promise<void> {
    await this.channel.deleteQueue(this.name);
    await this.connection.close();
  }
}
