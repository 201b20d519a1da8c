import { Body, Controller, Post } from '@nestjs/common';
import { Idempotent, IdempotentManager } from 'nestjs-idempotency-postgres';
import type { EntityManager } from 'typeorm';
import { OrdersService, type OrderRequest } from './orders.service';
import { Payment } from './payment.entity';
import { PositiveIntegerField } from './positive-integer.pipe';

interface PaymentRequest {
  reference: string;
  amount: number;
}

@Controller()
export class OrdersController {
  constructor(private readonly orders: OrdersService) {}

  @Post('orders')
  @Idempotent()
  placeOrder(@Body(new PositiveIntegerField('quantity')) body: OrderRequest) {
    return this.orders.place(body);
  }

  @Post('payments')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  pay(@Body(new PositiveIntegerField('amount')) body: PaymentRequest, @IdempotentManager() manager: EntityManager) {
    return manager.getRepository(Payment).save({ reference: body.reference, amount: body.amount });
  }
}
