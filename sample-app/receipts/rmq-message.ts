import type { RmqContext } from '@nestjs/microservices';
import type { Channel, Message } from 'amqplib';

/** Deliveries already acknowledged or rejected: settling one twice makes RabbitMQ close the channel. */
const settled = new WeakSet<Message>();

/** The message's AMQP `messageId`: its idempotency key. */
export function messageIdOf(context: RmqContext): unknown {
  return (context.getMessage() as Message).properties.messageId;
}

export function ack(context: RmqContext): void {
  settle(context, (channel, message) => channel.ack(message));
}

/** `requeue`: hand it back to the queue for another try, or drop it (dead-letter it, if the queue has a dead-letter exchange). */
export function nack(context: RmqContext, requeue: boolean): void {
  settle(context, (channel, message) => channel.nack(message, false, requeue));
}

function settle(context: RmqContext, action: (channel: Channel, message: Message) => void): void {
  const message = context.getMessage() as Message;
  if (settled.has(message)) return;
  settled.add(message);
  try {
    action(context.getChannelRef() as Channel, message);
  } catch {
    // The channel closed meanwhile: the broker redelivers what it left unacknowledged.
  }
}
