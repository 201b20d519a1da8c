import { Injectable } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import type { Payment } from '../payments/payment.entity.js';
import { OutboxMessage } from './outbox-message.entity.js';
import { PAYMENT_SUCCEEDED, PaymentEvents, type PaymentSucceeded } from './payment-events.js';

/**
 * Writes the event to the outbox in the payment's transaction: it exists if and only if
 * the payment does, and the request never waits for RabbitMQ (the relay publishes it).
 */
@Injectable()
export class OutboxPaymentEvents extends PaymentEvents {
  async succeeded(manager: EntityManager, payment: Payment): Promise<void> {
    const event: PaymentSucceeded = {
      paymentId: payment.id,
      userId: payment.userId,
      amount: payment.amount,
      currency: payment.currency,
    };
    await manager.insert(OutboxMessage, { pattern: PAYMENT_SUCCEEDED, messageId: payment.id, payload: event });
  }
}
