import { Injectable } from '@nestjs/common';
import { randomUUID } from 'node:crypto';

export interface OrderRequest {
  item: string;
  quantity: number;
}

/** Counts how many times the handler really ran; every order is unique (id, time). */
@Injectable()
export class OrdersService {
  runs = 0;

  place(order: OrderRequest) {
    this.runs++;
    return { id: randomUUID(), item: order.item, quantity: order.quantity, placedAt: new Date().toISOString() };
  }
}
