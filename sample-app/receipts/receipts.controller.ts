import { Controller, Logger, UseFilters } from '@nestjs/common';
import { Ctx, EventPattern, Payload, type RmqContext } from '@nestjs/microservices';
import { Idempotent, IdempotentTransaction } from '../../lib/index.js';
import { PAYMENT_SUCCEEDED, type PaymentSucceeded } from '../payment-events/payment-events.js';
import { Receipt } from './receipt.entity.js';
import { RequeueFilter, UnprocessableMessageError } from './requeue.filter.js';
import { ack, messageIdOf } from './rmq-message.js';

const logger = new Logger('Receipts');

/** The messages this process ran the handler for: the others it acknowledges are duplicates. */
const written = new WeakSet<object>();

/**
 * Consumes `payment.succeeded` (with `noAck: false`): one receipt per payment, however
 * often the event is delivered (the outbox relay publishes at least once, RabbitMQ
 * redelivers what was unacknowledged when a consumer went away) and however many
 * instances consume the queue. The key is the message's AMQP `messageId`, the payment's id.
 */
@Controller()
@UseFilters(RequeueFilter)
export class ReceiptsController {
  constructor(private readonly transaction: IdempotentTransaction) {}

  /**
   * Transactional: the receipt and the idempotency record commit together, so a crash
   * leaves either both or neither. The library acknowledges the message once that commit
   * is done (never before: a crash in between would lose the message), and a duplicate,
   * also one arriving while the first is in flight on any instance, is only acknowledged.
   */
  // <string>: the untyped overload; the typed one types every parameter after the data as unknown.
  @EventPattern<string>(PAYMENT_SUCCEEDED)
  @Idempotent({
    transactional: true,
    concurrency: 'wait',
    acknowledge: (_event: PaymentSucceeded, context: RmqContext) => {
      const id = String(messageIdOf(context));
      if (written.has(context.getMessage())) logger.log(`${PAYMENT_SUCCEEDED} ${id}: committed, acknowledged`);
      else logger.log(`${PAYMENT_SUCCEEDED} ${id}: a duplicate, acknowledged`);
      ack(context);
    },
  })
  async onPaymentSucceeded(@Payload() event: PaymentSucceeded, @Ctx() context: RmqContext): Promise<void> {
    // The key is the message id: a receipt for another payment than it names would escape the guard.
    if (!isPaymentSucceeded(event) || event.paymentId !== messageIdOf(context)) {
      throw new UnprocessableMessageError('the message is not a payment.succeeded event whose id is its payment');
    }
    logger.log(`${PAYMENT_SUCCEEDED} ${event.paymentId}: writing its receipt`);
    const { manager } = this.transaction;
    await manager.insert(Receipt, {
      paymentId: event.paymentId,
      userId: event.userId,
      amount: event.amount,
      currency: event.currency,
    });
    written.add(context.getMessage());
  }
}

function isPaymentSucceeded(event: unknown): event is PaymentSucceeded {
  const { paymentId, userId, amount, currency } = (event ?? {}) as Record<string, unknown>;
  return (
    typeof paymentId === 'string' &&
    /^[0-9a-f-]{36}$/i.test(paymentId) &&
    typeof userId === 'string' &&
    Number.isSafeInteger(amount) &&
    typeof currency === 'string' &&
    /^[A-Z]{3}$/.test(currency)
  );
}
