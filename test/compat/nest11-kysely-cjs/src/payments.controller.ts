import { Body, Controller, HttpException, HttpStatus, Inject, Post, Query } from '@nestjs/common';
import { Idempotent } from 'nestjs-idempotency-postgres';
import { setTimeout as sleep } from 'node:timers/promises';
import { DB, type Database } from './database.module';

export const SETTINGS = Symbol('SETTINGS');
export interface Settings {
  /** How long a payment waits after its write, for the crash test to kill the process. */
  holdMs: number;
}

interface PaymentRequest {
  reference: string;
  amount: number;
  /**
   * Write the payment inside Kysely's own `db.transaction()`, which commits, or after one
   * that rolled back a draft row: both nest in the idempotency transaction.
   */
  nested?: 'commit' | 'rollback';
}

/** Above this amount the payment is written, then declined: a 4xx the library stores. */
const LIMIT = 10_000;

class DraftDiscarded extends Error {}

@Controller()
export class PaymentsController {
  constructor(
    @Inject(DB) private readonly db: Database,
    @Inject(SETTINGS) private readonly settings: Settings,
  ) {}

  @Post('payments')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  async pay(@Body() body: PaymentRequest, @Query('fail') fail: string | undefined) {
    // The application's one Kysely: here its connection is the request's transaction.
    const row = { reference: body.reference, amount: body.amount };
    let payment;
    if (body.nested === 'commit') {
      payment = await this.db
        .transaction()
        .execute((trx) => trx.insertInto('payments').values(row).returningAll().executeTakeFirstOrThrow());
    } else {
      if (body.nested === 'rollback') {
        try {
          await this.db.transaction().execute(async (trx) => {
            await trx
              .insertInto('payments')
              .values({ ...row, reference: `${body.reference}-draft` })
              .execute();
            throw new DraftDiscarded();
          });
        } catch (error) {
          if (!(error instanceof DraftDiscarded)) throw error;
        }
      }
      payment = await this.db.insertInto('payments').values(row).returningAll().executeTakeFirstOrThrow();
    }
    if (this.settings.holdMs > 0) await sleep(this.settings.holdMs);
    if (fail) throw new Error('the handler failed after writing the payment');
    if (body.amount > LIMIT) {
      throw new HttpException({ message: 'declined', reference: body.reference }, HttpStatus.PAYMENT_REQUIRED);
    }
    return payment;
  }

  @Post('receipts')
  @Idempotent({ concurrency: 'wait' })
  sendReceipt(@Body() body: { email: string; reference: string }) {
    // Lease mode: no transaction is open, so the same Kysely writes through the pool.
    return this.db
      .insertInto('receipts')
      .values({ email: body.email, reference: body.reference })
      .returningAll()
      .executeTakeFirstOrThrow();
  }
}
