import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Cron, Interval, ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import { AsyncLocalStorage } from 'node:async_hooks';
import { DataSource } from 'typeorm';
import {
  IdempotencyModule,
  IdempotentMethod,
  type IdempotentMethodOptions,
  IdempotentTransaction,
} from '../../lib/index.js';
import { EFFECT_INSERT } from './effects.js';

/**
 * An application with scheduled tasks for test/e2e/schedule.spec.ts, run as several
 * processes on one database. Each run of a task inserts an effect row keyed by its tick.
 *
 * Env: DATABASE_URL; GUARD=off runs the same tasks without `@IdempotentMethod()` (the
 * control: every instance runs every tick), with effect kinds ending in "-unguarded".
 */
const guarded = process.env.GUARD !== 'off';
const kind = (task: string) => (guarded ? task : `${task}-unguarded`);

/** `@IdempotentMethod()`, or nothing at all for the control run. */
const Guarded = (options?: IdempotentMethodOptions): MethodDecorator =>
  guarded ? (IdempotentMethod(options) as MethodDecorator) : () => undefined;

/**
 * A method wrapper that keeps the method's metadata on the wrapper, as tracing decorators
 * do (nestjs-otel's and Vendure's `@Span()`); `around` runs the wrapped method.
 */
function wrapper(around: (run: () => Promise<unknown>) => Promise<unknown>): MethodDecorator {
  return (_target, _key, descriptor: PropertyDescriptor) => {
    const original = descriptor.value as (...args: unknown[]) => Promise<unknown>;
    const wrapped = function (this: unknown, ...args: unknown[]) {
      return around(() => original.apply(this, args));
    };
    for (const key of Reflect.getMetadataKeys(original)) {
      Reflect.defineMetadata(key, Reflect.getMetadata(key, original), wrapped);
    }
    descriptor.value = wrapped;
  };
}

/** For a task decorated `@Cron() @Traced() @IdempotentMethod()`. */
const Traced = () => wrapper((run) => run());

const firedAt = new AsyncLocalStorage<number>();

/**
 * Notes when the scheduler fired the task, before `@IdempotentMethod()` reads the clock
 * for the tick: the time the method itself reads later may be past the next tick on a
 * loaded machine. Outermost, above `@Cron()`, so that `@Cron()` still decorates the
 * method wrapper directly.
 */
const NoteFiringTime = () => wrapper((run) => firedAt.run(Date.now(), run));

/** The ISO time of the start of the window of `ms` that the firing time falls in. */
const windowOf = (ms: number) => new Date(Math.floor(firedAt.getStore()! / ms) * ms).toISOString();

@Injectable()
class Ticks {
  constructor(
    private readonly dataSource: DataSource,
    private readonly transaction: IdempotentTransaction,
  ) {}

  // The default mode (lease). A cron timer fires just after the second it was scheduled
  // for, so the second it fired in is its tick: the key the wrapper computed.
  @NoteFiringTime()
  @Cron('* * * * * *')
  @Guarded()
  async everySecond(): Promise<void> {
    await this.dataSource.query(EFFECT_INSERT, [kind('cron'), windowOf(1000)]);
  }

  // Instances' interval timers are out of step, so a run may start at any point of its
  // window and end in the next: the effect takes the exact key from the record. In
  // transactional mode a claim is never committed in progress, so the only record in
  // progress this transaction sees is its own.
  @NoteFiringTime()
  @Interval(500)
  @Guarded({ transactional: true })
  async everyHalfSecond(): Promise<void> {
    if (!guarded) {
      await this.dataSource.query(EFFECT_INSERT, [kind('interval'), windowOf(500)]);
      return;
    }
    await this.transaction.manager.query(
      `INSERT INTO effects (kind, key)
       SELECT $1, idempotency_key FROM idempotency_keys
       WHERE route = 'Ticks.everyHalfSecond' AND status = 'in_progress'`,
      [kind('interval')],
    );
  }

  @NoteFiringTime()
  @Cron('* * * * * *', { name: 'traced-every-second' })
  @Traced()
  @Guarded()
  async tracedEverySecond(): Promise<void> {
    await this.dataSource.query(EFFECT_INSERT, [kind('traced'), windowOf(1000)]);
  }
}

@Module({
  imports: [
    TypeOrmModule.forRoot({ type: 'postgres', url: process.env.DATABASE_URL, extra: { max: 5 } }),
    IdempotencyModule.forRoot({ fingerprintSecret: 'scheduler secret for the tests' }),
    ScheduleModule.forRoot(),
  ],
  providers: [Ticks],
})
class SchedulerModule {}

async function main(): Promise<void> {
  const app = await NestFactory.createApplicationContext(SchedulerModule, { logger: ['error', 'warn'] });
  console.log('ready');
  process.once('SIGTERM', () => {
    void app.close().then(() => process.exit(0));
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
