import { type DynamicModule, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { MESSAGING_CONFIG, type MessagingConfig } from '../config.js';
import { OutboxMessage } from './outbox-message.entity.js';
import { OutboxPaymentEvents } from './outbox-payment-events.js';
import { OutboxRelay } from './outbox-relay.js';
import { PaymentEvents } from './payment-events.js';

/** `payment.succeeded` for every payment: written to the outbox with it, published by the relay. */
@Module({})
export class PaymentEventsModule {
  static forRoot(config: MessagingConfig): DynamicModule {
    return {
      module: PaymentEventsModule,
      imports: [TypeOrmModule.forFeature([OutboxMessage])],
      providers: [
        { provide: MESSAGING_CONFIG, useValue: config },
        { provide: PaymentEvents, useClass: OutboxPaymentEvents },
        OutboxRelay,
      ],
      exports: [PaymentEvents],
    };
  }
}
