import { type DynamicModule, Module } from '@nestjs/common';
import { type RmqOptions, Transport } from '@nestjs/microservices';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { MessagingConfig } from '../config.js';
import { QUEUE_OPTIONS } from '../payment-events/amqp-publisher.js';
import { Receipt } from './receipt.entity.js';
import { ReceiptsController } from './receipts.controller.js';

/**
 * At most this many messages are in flight per instance: each holds a database
 * connection for its transaction (a duplicate too, while it waits), and the pool is shared
 * with the HTTP requests.
 */
const PREFETCH = 5;

/** The consumer of payment events; `main.ts` connects it as the app's microservice. */
@Module({})
export class ReceiptsModule {
  static forRoot(): DynamicModule {
    return {
      module: ReceiptsModule,
      imports: [TypeOrmModule.forFeature([Receipt])],
      controllers: [ReceiptsController],
    };
  }

  /** The RabbitMQ server that delivers the queue's messages to `ReceiptsController`. */
  static microservice(config: MessagingConfig): RmqOptions {
    return {
      transport: Transport.RMQ,
      options: {
        urls: [config.url],
        queue: config.queue,
        queueOptions: QUEUE_OPTIONS,
        // Acknowledged through `acknowledge`, once the receipt has committed (or for a duplicate).
        noAck: false,
        prefetchCount: PREFETCH,
      },
    };
  }
}
