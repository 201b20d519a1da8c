import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { randomBytes } from 'node:crypto';
import { BROKER_URLS } from './brokers.js';

/**
 * A publisher on subjects of their own for one test file (other runs use the same server
 * at the same time): every subject starts with `prefix`, which consumers also use as their
 * queue group.
 */
export class TestSubjects {
  private constructor(
    readonly prefix: string,
    private readonly connection: NatsConnection,
  ) {}

  static async create(label: string): Promise<TestSubjects> {
    const connection = await connect({ servers: [BROKER_URLS.nats] });
    return new TestSubjects(`idempotency-e2e-${label}-${randomBytes(6).toString('hex')}`, connection);
  }

  subject(pattern: string): string {
    return `${this.prefix}.${pattern}`;
  }

  /**
   * Publishes what Nest's NATS server reads as an event (a packet without `id` gets no
   * reply), with a `Nats-Msg-Id` header when `messageId` is given.
   */
  publishEvent(pattern: string, data: unknown, messageId?: string): void {
    const subject = this.subject(pattern);
    const body = JSON.stringify({ pattern: subject, data });
    if (messageId === undefined) return this.connection.publish(subject, body);
    const header = headers();
    header.set('Nats-Msg-Id', messageId);
    this.connection.publish(subject, body, { headers: header });
  }

  /** Resolves once the server has everything published so far. */
  flush(): Promise<void> {
    return this.connection.flush();
  }

  close(): Promise<void> {
    return this.connection.close();
  }
}
