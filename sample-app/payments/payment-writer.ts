import { Injectable, Optional } from '@nestjs/common';
import { IdempotentTransaction } from '../../lib/index.js';
import { PaymentEvents } from '../payment-events/payment-events.js';
import { Payment } from './payment.entity.js';

/** A successful payment to record: what POST /payments writes once its card went through. */
export interface NewPayment {
  userId: string;
  amount: number;
  currency: string;
  cardLast4: string | null;
}

/**
 * Writes a payment in the transaction of the running transactional request, so that the
 * row commits with the stored response or not at all. One implementation per kind of
 * store, chosen once in AppModule: the controller never asks which one it has.
 */
export abstract class PaymentWriter {
  abstract create(payment: NewPayment): Promise<Payment>;
}

/** Through TypeORM's EntityManager (`IDEMPOTENCY_STORE=postgres` or `redis`). */
@Injectable()
export class EntityManagerPaymentWriter extends PaymentWriter {
  constructor(
    private readonly transaction: IdempotentTransaction,
    /** Present when RABBITMQ_URL is set. */
    @Optional() private readonly events?: PaymentEvents,
  ) {
    super();
  }

  async create(payment: NewPayment): Promise<Payment> {
    const { manager } = this.transaction;
    const payments = manager.getRepository(Payment);
    const saved = await payments.save(payments.create({ ...payment, status: 'succeeded' }));
    // In the same transaction: the event exists if and only if the payment does.
    await this.events?.succeeded(manager, saved);
    return saved;
  }
}

/** The columns the entity maps, as the pool writer reads them back. */
interface PaymentRow {
  id: string;
  user_id: string;
  amount: string;
  currency: string;
  card_last4: string | null;
  status: string;
  created_at: Date;
}

/**
 * With SQL through the transaction's node-postgres client (`IDEMPOTENCY_STORE=pool`: the
 * library runs on a pg Pool and has no EntityManager to hand out). The same row as the
 * entity's: the database fills in `id` and `created_at`, as it does for TypeORM.
 */
@Injectable()
export class PoolClientPaymentWriter extends PaymentWriter {
  constructor(private readonly transaction: IdempotentTransaction) {
    super();
  }

  async create({ userId, amount, currency, cardLast4 }: NewPayment): Promise<Payment> {
    const { rows } = await this.transaction.client.query<PaymentRow>(
      `INSERT INTO payments (user_id, amount, currency, card_last4, status)
       VALUES ($1, $2, $3, $4, 'succeeded')
       RETURNING id, user_id, amount, currency, card_last4, status, created_at`,
      [userId, amount, currency, cardLast4],
    );
    const [row] = rows;
    return Object.assign(new Payment(), {
      id: row.id,
      userId: row.user_id,
      // bigint comes back as a string; amounts are safe integers (checked on input).
      amount: Number(row.amount),
      currency: row.currency,
      cardLast4: row.card_last4,
      status: row.status,
      createdAt: row.created_at,
    });
  }
}
