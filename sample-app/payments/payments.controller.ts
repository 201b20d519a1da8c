import { Body, Controller, HttpException, Inject, Post, UseGuards } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { Idempotent } from '../../lib/index.js';
import { CallerGuard, CallerId } from '../caller.guard.js';
import { SAMPLE_CONFIG, type SampleConfig } from '../config.js';
import { type CreatePayment, CreatePaymentPipe } from './create-payment.pipe.js';
import { paymentView } from './payment.entity.js';
import { PaymentWriter } from './payment-writer.js';

/** Test cards, as payment providers document them. */
export const DECLINED_CARD = '4000000000000002';
export const PROVIDER_ERROR_CARD = '4000000000000119';

@Controller('payments')
@UseGuards(CallerGuard)
export class PaymentsController {
  constructor(
    @Inject(SAMPLE_CONFIG) private readonly config: SampleConfig,
    /** Writes in the request's transaction, through TypeORM or the pool's client (see AppModule). */
    private readonly payments: PaymentWriter,
  ) {}

  /**
   * Transactional: the payment row and the stored response commit together, or neither
   * does, so a crash can never leave a payment whose key looks unused. Parallel
   * duplicates wait for the first request and receive its response: a client that
   * double-submits a payment sees one payment, not an error.
   */
  @Post()
  @Idempotent({ concurrency: 'wait', transactional: true })
  async create(@CallerId() userId: string, @Body(CreatePaymentPipe) body: CreatePayment) {
    if (body.card === DECLINED_CARD) {
      await this.callProvider();
      // A 4xx is the operation's final answer: stored and replayed to retries.
      throw new HttpException(
        {
          type: 'urn:sample-app:problem:card-declined',
          title: 'Card declined',
          status: 402,
          detail: 'The card was declined by the issuer.',
        },
        402,
      );
    }
    if (body.card === PROVIDER_ERROR_CARD) {
      await this.callProvider();
      // A 5xx is not stored: the key is released and a retry runs again.
      throw new HttpException(
        {
          type: 'urn:sample-app:problem:provider-unavailable',
          title: 'Payment provider unavailable',
          status: 503,
          detail: 'The payment provider did not answer; retry with the same key.',
        },
        503,
      );
    }
    const payment = await this.payments.create({
      userId,
      amount: body.amount,
      currency: body.currency,
      cardLast4: body.card ? body.card.slice(-4) : null,
    });
    await this.callProvider();
    return paymentView(payment);
  }

  /**
   * Stands in for the payment provider's API. A real call happens outside any database
   * transaction, so it must be idempotent itself: pass the caller's scope and key on as the
   * provider's own idempotency key, and a retry after a crash asks for the same charge.
   */
  private async callProvider(): Promise<void> {
    if (this.config.providerLatencyMs > 0) await sleep(this.config.providerLatencyMs);
  }
}
