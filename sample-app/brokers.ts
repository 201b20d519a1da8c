import type { DynamicModule, INestApplication, Logger } from '@nestjs/common';
import type { RmqOptions } from '@nestjs/microservices';
import type { SampleConfig } from './config.js';

/** The parts of the sample app that need a broker, each on when its URL is set. */
export interface BrokerFeatures {
  /** Modules for `AppModule.forRoot()`. */
  imports: DynamicModule[];
  /** Before `listen()`: attaches the message consumer, if any. */
  connect(app: INestApplication): void;
  /** After `listen()`: starts consuming. It does not wait for the broker: HTTP serves meanwhile. */
  start(app: INestApplication): void;
}

/**
 * Their modules are imported only when their broker is configured, so that without
 * RABBITMQ_URL and REDIS_URL nothing of theirs loads, connects or logs beyond one line.
 */
export async function loadBrokerFeatures(config: SampleConfig, logger: Logger): Promise<BrokerFeatures> {
  const { messaging, settlements } = config;
  const imports: DynamicModule[] = [];
  const off: string[] = [];
  let microservice: RmqOptions | undefined;
  if (messaging) {
    const { PaymentEventsModule } = await import('./payment-events/payment-events.module.js');
    const { ReceiptsModule } = await import('./receipts/receipts.module.js');
    imports.push(PaymentEventsModule.forRoot(messaging), ReceiptsModule.forRoot());
    microservice = ReceiptsModule.microservice(messaging);
    logger.log(`payment events: published to and consumed from RabbitMQ queue "${messaging.queue}"`);
  } else {
    off.push('RABBITMQ_URL is unset: no payment events, no receipts');
  }
  if (settlements) {
    const { SettlementsModule } = await import('./settlements/settlements.module.js');
    imports.push(SettlementsModule.forRoot(settlements));
    logger.log(`settlements: one per ${settlements.intervalMs} ms through BullMQ (prefix "${settlements.prefix}")`);
  } else {
    off.push('REDIS_URL is unset: no settlements');
  }
  if (off.length) logger.log(off.join('; '));
  return {
    imports,
    connect(app) {
      // inheritAppConfig: the global interceptors that IdempotencyModule registers (and
      // its problem filter) serve the consumer too; without it, @Idempotent() on the
      // handler would do nothing.
      if (microservice) app.connectMicroservice(microservice, { inheritAppConfig: true });
    },
    start(app) {
      if (!microservice) return;
      app.startAllMicroservices().then(
        () => logger.log(`consuming "${messaging!.queue}"`),
        (error: unknown) => logger.error(`the RabbitMQ consumer failed to start: ${String(error)}`),
      );
    },
  };
}
