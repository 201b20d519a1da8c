/**
 * The id a message carries by itself, read from the transport's context without importing
 * `@nestjs/microservices` (an optional peer): the AMQP `messageId` property of a RabbitMQ
 * message (`RmqContext`), the `Nats-Msg-Id` header of a NATS message (`NatsContext`, the
 * header JetStream also de-duplicates by). Other transports carry no id of their own:
 * give the route a `key` extractor.
 */
export function messageIdOf(context: unknown): string | undefined {
  const rpc = context as { getMessage?: () => unknown; getHeaders?: () => unknown } | null;
  if (typeof rpc?.getHeaders === 'function') {
    const headers = rpc.getHeaders() as { get?: (name: string) => unknown } | undefined;
    const id = typeof headers?.get === 'function' ? headers.get('Nats-Msg-Id') : undefined;
    return typeof id === 'string' && id !== '' ? id : undefined;
  }
  if (typeof rpc?.getMessage === 'function') {
    const message = rpc.getMessage() as { properties?: { messageId?: unknown } } | undefined;
    const id = message?.properties?.messageId;
    return typeof id === 'string' && id !== '' ? id : undefined;
  }
  return undefined;
}
