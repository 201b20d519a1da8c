import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';

/** The queue's settings; the consumer (`receipts.microservice.ts`) declares it with the same ones. */
export const QUEUE_OPTIONS = { durable: true };

/** How long a batch may wait for the broker's confirms before it counts as not published. */
const CONFIRM_TIMEOUT_MS = 5000;

export interface OutgoingMessage {
  pattern: string;
  messageId: string;
  payload: unknown;
}

/**
 * Publishes to one queue with publisher confirms, in the envelope Nest's RabbitMQ
 * transport reads (`{ pattern, data }`). It connects on first use and again after the
 * connection drops; it never buffers: a message either is confirmed or `publish` throws.
 */
export class AmqpPublisher {
  private channel?: Promise<ConfirmChannel>;
  private connection?: ChannelModel;

  constructor(
    private readonly url: string,
    private readonly queue: string,
  ) {}

  /** Resolves once the broker has confirmed every message (persisted, as the queue is durable). */
  async publish(messages: readonly OutgoingMessage[]): Promise<void> {
    const channel = await this.open();
    try {
      for (const { pattern, messageId, payload } of messages) {
        const content = Buffer.from(JSON.stringify({ pattern, data: payload }));
        channel.sendToQueue(this.queue, content, { messageId, persistent: true, contentType: 'application/json' });
      }
      await withTimeout(channel.waitForConfirms(), CONFIRM_TIMEOUT_MS);
    } catch (error) {
      // Whatever the channel's state, the next attempt starts on a fresh connection.
      await this.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    const connection = this.connection;
    this.channel = undefined;
    this.connection = undefined;
    await connection?.close().catch(() => undefined);
  }

  private open(): Promise<ConfirmChannel> {
    this.channel ??= (async () => {
      const connection = await connect(this.url, { timeout: CONFIRM_TIMEOUT_MS });
      this.connection = connection;
      // A dropped connection must not crash the process: the next publish reconnects.
      connection.on('error', () => undefined);
      connection.on('close', () => {
        if (this.connection === connection) {
          this.channel = undefined;
          this.connection = undefined;
        }
      });
      const channel = await connection.createConfirmChannel();
      channel.on('error', () => undefined);
      await channel.assertQueue(this.queue, QUEUE_OPTIONS);
      return channel;
    })().catch(async (error: unknown) => {
      await this.close();
      throw error;
    });
    return this.channel;
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no confirm from the broker within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
