import { describe, expect, it } from '@jest/globals';
import { RmqContext, NatsContext, KafkaContext, TcpContext } from '@nestjs/microservices';
import { headers } from '@nats-io/transport-node';
import { messageIdOf } from '../../lib/microservices/message-key.js';

/** The contexts are Nest's own classes, built as its servers build them. */
describe('messageIdOf', () => {
  it("reads RabbitMQ's messageId property", () => {
    const context = new RmqContext([{ properties: { messageId: 'm-1' }, content: Buffer.from('{}') }, {}, 'p']);
    expect(messageIdOf(context)).toBe('m-1');
    expect(messageIdOf(new RmqContext([{ properties: {} }, {}, 'p']))).toBeUndefined();
    expect(messageIdOf(new RmqContext([{ properties: { messageId: '' } }, {}, 'p']))).toBeUndefined();
  });

  it("reads NATS's Nats-Msg-Id header", () => {
    const withId = headers();
    withId.set('Nats-Msg-Id', 'n-1');
    expect(messageIdOf(new NatsContext(['subject', withId]))).toBe('n-1');
    expect(messageIdOf(new NatsContext(['subject', headers()]))).toBeUndefined();
    expect(messageIdOf(new NatsContext(['subject', undefined]))).toBeUndefined();
  });

  it('finds no id on transports that carry none of their own', () => {
    expect(messageIdOf(new TcpContext([{} as never, 'pattern']))).toBeUndefined();
    expect(messageIdOf(new KafkaContext([{ key: 'k', headers: {} }, 0, 't'] as never))).toBeUndefined();
    expect(messageIdOf(undefined)).toBeUndefined();
  });
});
