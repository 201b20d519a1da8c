import { Injectable, type PipeTransform } from '@nestjs/common';
import { InvalidBodyException, objectBody } from '../validation.js';

export interface CreatePayment {
  /** Minor units (cents), a positive safe integer. */
  amount: number;
  /** ISO 4217 code, three upper-case letters. */
  currency: string;
  card?: string;
}

/** Validates `POST /payments` bodies; unknown fields are ignored. */
@Injectable()
export class CreatePaymentPipe implements PipeTransform<unknown, CreatePayment> {
  transform(value: unknown): CreatePayment {
    const body = objectBody(value);
    const errors: string[] = [];
    const { amount, currency, card } = body;
    if (typeof amount !== 'number' || !Number.isSafeInteger(amount) || amount <= 0) {
      errors.push('amount must be a positive integer (minor units)');
    }
    if (typeof currency !== 'string' || !/^[A-Z]{3}$/.test(currency)) {
      errors.push('currency must be three upper-case letters');
    }
    if (card !== undefined && (typeof card !== 'string' || card.length === 0 || card.length > 64)) {
      errors.push('card must be a non-empty string');
    }
    if (errors.length) throw new InvalidBodyException(errors);
    return { amount: amount as number, currency: currency as string, card: card as string | undefined };
  }
}
