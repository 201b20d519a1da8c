import { Body, Controller, HttpException, HttpStatus, Inject, Post, Query } from '@nestjs/common';
import { drizzle } from 'drizzle-orm/node-postgres';
import { TransactionRollbackError } from 'drizzle-orm/errors';
import { Idempotent, IdempotentClient } from 'nestjs-idempotency-postgres';
import type { PoolClient } from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import { DB, type Database } from './database.module.js';
import { payments, receipts } from './schema.js';

export const SETTINGS = Symbol('SETTINGS');
export interface Settings {
  /** How long a payment waits after its write, for the crash test to kill the process. */
  holdMs: number;
}

interface PaymentRequest {
  reference: string;
  amount: number;
  /**
   * Write the payment inside Drizzle's own `db.transaction()`, which commits, or after
   * one that rolled back a draft row: both nest in the idempotency transaction.
   */
  nested?: 'commit' | 'rollback';
}

/** Above this amount the payment is written, then declined: a 4xx the library stores. */
const LIMIT = 10_000;

@Controller()
export class PaymentsController {
  constructor(
    @Inject(DB) private readonly db: Database,
    @Inject(SETTINGS) private readonly settings: Settings,
  ) {}

  @Post('payments')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  async pay(
    @Body() body: PaymentRequest,
    @Query('fail') fail: string | undefined,
    @IdempotentClient() client: PoolClient,
  ) {
    const db = drizzle({ client });
    const row = { reference: body.reference, amount: body.amount };
    let payment;
    if (body.nested === 'commit') {
      [payment] = await db.transaction((tx) => tx.insert(payments).values(row).returning());
    } else {
      if (body.nested === 'rollback') {
        try {
          await db.transaction(async (tx) => {
            await tx.insert(payments).values({ ...row, reference: `${body.reference}-draft` });
            tx.rollback();
          });
        } catch (error) {
          if (!(error instanceof TransactionRollbackError)) throw error;
        }
      }
      [payment] = await db.insert(payments).values(row).returning();
    }
    if (this.settings.holdMs > 0) await sleep(this.settings.holdMs);
    if (fail) throw new Error('the handler failed after writing the payment');
    if (body.amount > LIMIT)
      throw new HttpException({ message: 'declined', reference: body.reference }, HttpStatus.PAYMENT_REQUIRED);
    return payment;
  }

  @Post('receipts')
  @Idempotent({ concurrency: 'wait' })
  async sendReceipt(@Body() body: { email: string; reference: string }) {
    // Lease mode: no transaction is handed over; the write goes through the pool.
    const [receipt] = await this.db
      .insert(receipts)
      .values({ email: body.email, reference: body.reference })
      .returning();
    return receipt;
  }
}
