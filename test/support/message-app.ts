import 'reflect-metadata';
import {
  type ArgumentsHost,
  Catch,
  Controller,
  type ExceptionFilter,
  type INestApplication,
  type INestMicroservice,
  type LogLevel,
  Module,
  UseFilters,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  Ctx,
  EventPattern,
  MessagePattern,
  type MicroserviceOptions,
  type NatsContext,
  Payload,
  type RmqContext,
  Transport,
} from '@nestjs/microservices';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { throwError } from 'rxjs';
import { DataSource } from 'typeorm';
import { Idempotent, IdempotencyModule, IdempotentTransaction, MissingMessageKeyError } from '../../lib/index.js';
import { EFFECT_INSERT } from './effects.js';

/**
 * A consumer of RabbitMQ or NATS messages whose handlers are guarded by `@Idempotent()`,
 * run in the test process or as a child process (message-consumer.ts). Every handler
 * inserts one row into `effects` per run, so "ran once" is a count of rows.
 */
export interface ConsumerSettings {
  transport: 'rmq' | 'nats';
  databaseUrl: string;
  brokerUrl: string;
  /** RabbitMQ: the queue consumed. NATS: the prefix of every subject, and the queue group. */
  queue: string;
  /** RabbitMQ: unacknowledged deliveries at a time (the consumer acknowledges by hand). */
  prefetch?: number;
  /** How long each handler works after its write, to widen the window for duplicates. */
  workMs?: number;
  /** RabbitMQ: `acknowledge` requeues a first delivery instead of acking it, as if its ack were lost. */
  requeueFirstDelivery?: boolean;
  /** RabbitMQ: on a first delivery, `acknowledge` stops before acking (the record is stored); the test kills the process there. */
  pauseBeforeAck?: boolean;
  /**
   * A hybrid application (HTTP with the consumer connected to it) whose microservice
   * inherits the application's global enhancers, or has a configuration of its own.
   */
  hybrid?: 'inherit' | 'separate';
  /** RabbitMQ: on a first delivery, the transactional handler stops after its write, before the commit; the test kills the process there. */
  pauseInHandler?: boolean;
}

/** What the consumer reports: a settled message, a refused one, or a hook that was reached. */
export interface Observation {
  event: 'ready' | 'acked' | 'requeued' | 'refused' | 'paused-in-handler' | 'paused-before-ack';
  pattern?: string;
  /** The message's own id (AMQP messageId, Nats-Msg-Id), if any. */
  id?: string;
  redelivered?: boolean;
  /** For a refused message: the error's name. */
  error?: string;
}

/** The amqplib channel a RabbitMQ message came on, which alone can ack or nack it. */
function rmqParts(context: RmqContext) {
  return {
    channel: context.getChannelRef() as {
      ack(message: unknown): void;
      nack(message: unknown, allUpTo: boolean, requeue: boolean): void;
    },
    message: context.getMessage() as unknown,
  };
}

/** A message's id, its pattern and whether RabbitMQ delivered it before. */
function describeMessage(context: RmqContext | NatsContext): Omit<Observation, 'event'> {
  if ('getChannelRef' in context) {
    const message = context.getMessage() as {
      fields: { redelivered: boolean };
      properties: { messageId?: string };
    };
    return { pattern: context.getPattern(), id: message.properties.messageId, redelivered: message.fields.redelivered };
  }
  return { pattern: context.getSubject(), id: context.getHeaders()?.get('Nats-Msg-Id') || undefined };
}

/**
 * Starts a consumer. `hold`, in the test process only, keeps the `order.reserve` handler
 * running after its write until the promise it returns settles.
 */
export async function startConsumer(
  settings: ConsumerSettings,
  observe: (observation: Observation) => void,
  hold: () => Promise<void> = () => Promise.resolve(),
): Promise<INestMicroservice | INestApplication> {
  const prefix = settings.transport === 'nats' ? `${settings.queue}.` : '';
  const rmq = settings.transport === 'rmq';

  /**
   * Acknowledges a message the library has settled (its run stored, or a duplicate
   * answered): with RabbitMQ's manual acknowledgement, only after the record is stored,
   * so that a crash before it leaves the message to be delivered again.
   */
  const acknowledge = async (_data: unknown, context: RmqContext | NatsContext): Promise<void> => {
    const described = describeMessage(context);
    const firstDelivery = described.redelivered === false;
    if (settings.pauseBeforeAck && firstDelivery) {
      observe({ event: 'paused-before-ack', ...described });
      // Held here until the test kills the process: the record is stored, the ack never sent.
      await new Promise<never>(() => {});
    }
    if (rmq) {
      const { channel, message } = rmqParts(context as RmqContext);
      if (settings.requeueFirstDelivery && firstDelivery) {
        // The broker hands the message out again, as it does when an ack is lost with its connection.
        channel.nack(message, false, true);
        observe({ event: 'requeued', ...described });
        return;
      }
      channel.ack(message);
    }
    observe({ event: 'acked', ...described });
  };

  /**
   * Refused messages are reported; with RabbitMQ they are dropped (a message without a
   * key can never be accepted), or requeued when they may succeed later.
   */
  @Catch()
  class RefusalFilter implements ExceptionFilter {
    catch(error: unknown, host: ArgumentsHost) {
      const context = host.switchToRpc().getContext<RmqContext | NatsContext>();
      const name = error instanceof Error ? error.name : String(error);
      observe({ event: 'refused', error: name, ...describeMessage(context) });
      if (rmq) {
        const { channel, message } = rmqParts(context as RmqContext);
        channel.nack(message, false, !(error instanceof MissingMessageKeyError));
      }
      return throwError(() => ({ status: 'error', message: name }));
    }
  }

  @Controller()
  @UseFilters(RefusalFilter)
  @Idempotent({ acknowledge })
  class OrdersController {
    constructor(
      private readonly dataSource: DataSource,
      private readonly transaction: IdempotentTransaction,
    ) {}

    private async work(): Promise<void> {
      if (settings.workMs) await sleep(settings.workMs);
    }

    // <string>: the patterns are built at run time; Nest 12 would read a bare string as a key of a typed event map.

    /** Lease mode: the effect commits on its own, before the record is completed. */
    @EventPattern<string>(`${prefix}order.placed`)
    @Idempotent({ concurrency: 'wait' })
    async orderPlaced(@Payload() data: { ref: string }): Promise<void> {
      await this.dataSource.query(EFFECT_INSERT, ['order.placed', data.ref]);
      await this.work();
    }

    /** Request-response: a repeat gets the stored reply, which a second run could not reproduce. */
    @MessagePattern<string>(`${prefix}order.quote`)
    @Idempotent({ concurrency: 'wait' })
    async quote(
      @Payload() data: { ref: string; amount: number },
    ): Promise<{ ref: string; quote: string; total: number }> {
      await this.dataSource.query(EFFECT_INSERT, ['order.quote', data.ref]);
      await this.work();
      return { ref: data.ref, quote: randomUUID(), total: data.amount * 2 };
    }

    /** Inbox pattern: the write commits together with the record, or not at all. */
    @EventPattern<string>(`${prefix}payment.captured`)
    @Idempotent({ transactional: true, concurrency: 'wait' })
    async paymentCaptured(@Payload() data: { ref: string }, @Ctx() context: RmqContext | NatsContext): Promise<void> {
      await this.transaction.manager.query(EFFECT_INSERT, ['payment.captured', data.ref]);
      const described = describeMessage(context);
      if (settings.pauseInHandler && described.redelivered === false) {
        observe({ event: 'paused-in-handler', ...described });
        // Held here until the test kills the process: the write is made, not committed.
        await new Promise<never>(() => {});
      }
      await this.work();
    }

    /** A message without an id runs unguarded here. */
    @EventPattern<string>(`${prefix}audit.logged`)
    @Idempotent({ required: false })
    async auditLogged(@Payload() data: { ref: string }): Promise<void> {
      await this.dataSource.query(EFFECT_INSERT, ['audit.logged', data.ref]);
    }

    /** Keyed by an id inside the payload, for publishers that set no header or property. */
    @EventPattern<string>(`${prefix}invoice.paid`)
    @Idempotent({ key: (data: { eventId?: string } | undefined) => data?.eventId, concurrency: 'wait' })
    async invoicePaid(@Payload() data: { ref: string }): Promise<void> {
      await this.dataSource.query(EFFECT_INSERT, ['invoice.paid', data.ref]);
      await this.work();
    }
  }

  /**
   * The default concurrency ('reject'), and no exception filter of its own: a duplicate
   * that arrives while the first runs gets the library's error as the library renders it.
   */
  @Controller()
  @Idempotent({ acknowledge })
  class ReservationsController {
    constructor(private readonly dataSource: DataSource) {}

    @MessagePattern<string>(`${prefix}order.reserve`)
    async reserve(@Payload() data: { ref: string }): Promise<{ ref: string; reservation: string }> {
      await this.dataSource.query(EFFECT_INSERT, ['order.reserve', data.ref]);
      await hold();
      return { ref: data.ref, reservation: randomUUID() };
    }
  }

  @Module({
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url: settings.databaseUrl, extra: { max: 20 } }),
      IdempotencyModule.forRoot(),
    ],
    controllers: [OrdersController, ReservationsController],
  })
  class ConsumerModule {}

  const transport: MicroserviceOptions = rmq
    ? {
        transport: Transport.RMQ,
        options: {
          urls: [settings.brokerUrl],
          queue: settings.queue,
          queueOptions: { durable: false },
          noAck: false,
          prefetchCount: settings.prefetch ?? 10,
        },
      }
    : { transport: Transport.NATS, options: { servers: [settings.brokerUrl], queue: settings.queue } };
  const logger: LogLevel[] = ['error', 'warn'];
  let app: INestMicroservice | INestApplication;
  let microservice: INestMicroservice;
  if (settings.hybrid) {
    app = await NestFactory.create(ConsumerModule, { logger });
    microservice = app.connectMicroservice(transport, { inheritAppConfig: settings.hybrid === 'inherit' });
    await app.startAllMicroservices();
    await app.init();
  } else {
    app = microservice = await NestFactory.createMicroservice(ConsumerModule, { ...transport, logger });
    await microservice.listen();
  }
  if (!rmq) {
    // The subscriptions are on the server once it has answered a ping after them.
    await microservice.unwrap<{ flush(): Promise<void> }>().flush();
  }
  observe({ event: 'ready' });
  return app;
}
