import type { EntityManager } from 'typeorm';
import type { Payment } from '../payments/payment.entity.js';

/** The pattern of the event published for each successful payment. */
export const PAYMENT_SUCCEEDED = 'payment.succeeded';

/** The data of a `payment.succeeded` event; its AMQP `messageId` is `paymentId`. */
export interface PaymentSucceeded {
  paymentId: string;
  userId: string;
  amount: number;
  currency: string;
}

/**
 * What the payments controller tells about a payment that succeeded, inside the payment's
 * transaction. Provided only when RABBITMQ_URL is set; the controller does without it.
 */
export abstract class PaymentEvents {
  abstract succeeded(manager: EntityManager, payment: Payment): Promise<void>;
}
