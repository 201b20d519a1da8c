import { Controller, Post, UseGuards } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { CallerGuard } from './caller.guard.js';

/** How long an issued key is meant to be used: the replay window of `POST /payments`. */
export const INTENT_LIFETIME_MS = 24 * 60 * 60 * 1000;

/**
 * "Start payment": the server issues the key, so that every device of the caller can
 * retry the same payment with it. Keys are scoped per caller, so a key handed to (or
 * guessed by) another user opens nothing of this one's.
 */
@Controller('payment-intents')
@UseGuards(CallerGuard)
export class PaymentIntentsController {
  @Post()
  create() {
    return {
      idempotencyKey: randomUUID(),
      expiresAt: new Date(Date.now() + INTENT_LIFETIME_MS).toISOString(),
    };
  }
}
