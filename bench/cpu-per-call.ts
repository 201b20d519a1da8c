import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { metrics } from '@opentelemetry/api';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { IdempotencyModule, type IdempotencyModuleOptions, IdempotencyService } from '../lib/index.js';
import { benchDatabase } from './database.js';

/**
 * `npm run build && node dist/bench/cpu-per-call.js`: the process's CPU time per call,
 * one call at a time (no HTTP, no concurrency, so no group commit), for one INSERT alone,
 * in a TypeORM transaction, and through `IdempotencyService.run()` in each mode; each as a
 * ratio to the plain INSERT of the same round. It isolates what the library's own work and
 * statements cost the application per first execution. The "events + metrics" calls go
 * through a second application, in the same process, with an `onEvent` listener and
 * `metrics: true` (the OpenTelemetry SDK registered, with a reader that nothing collects
 * during the run, as between two scrapes); their last column is the ratio to the same
 * mode without them.
 */
const CALLS = Number(process.env.CALLS ?? 1000);
const ROUNDS = 3;
/** Aggregates like any SDK reader; nothing collects it during a run. */
class IdleReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

const INSERT = "INSERT INTO payments (user_id, amount, currency, status) VALUES ('bench', 1000, 'EUR', 'succeeded')";

async function main(): Promise<void> {
  const database = await benchDatabase('idem_cpu_');
  try {
    metrics.setGlobalMeterProvider(new MeterProvider({ readers: [new IdleReader()] }));
    let seen = 0;
    const start = async (options: IdempotencyModuleOptions) => {
      @Module({
        imports: [
          TypeOrmModule.forRoot({ type: 'postgres', url: database.url, extra: { max: 10 } }),
          IdempotencyModule.forRoot({ fingerprintSecret: 'the cpu-per-call bench secret', ...options }),
        ],
      })
      class CpuModule {}
      const app = await NestFactory.createApplicationContext(CpuModule, { logger: false });
      return { app, service: app.get(IdempotencyService), dataSource: app.get(DataSource) };
    };
    const { app, service, dataSource } = await start({});
    const observed = await start({ onEvent: () => void seen++, metrics: true });
    const calls: Record<string, () => Promise<unknown>> = {
      'INSERT alone': () => dataSource.query(INSERT),
      'INSERT in a TypeORM transaction': () => dataSource.transaction((manager) => manager.query(INSERT)),
      'run(), lease mode': () =>
        service.run({ key: randomUUID(), name: 'lease', payload: { amount: 1000 } }, () => dataSource.query(INSERT)),
      'run(), transactional mode': () =>
        service.run({ key: randomUUID(), name: 'tx', payload: { amount: 1000 }, transactional: true }, (manager) =>
          manager.query(INSERT),
        ),
      'run(), lease, events + metrics': () =>
        observed.service.run({ key: randomUUID(), name: 'lease', payload: { amount: 1000 } }, () =>
          observed.dataSource.query(INSERT),
        ),
      'run(), tx, events + metrics': () =>
        observed.service.run(
          { key: randomUUID(), name: 'tx', payload: { amount: 1000 }, transactional: true },
          (manager) => manager.query(INSERT),
        ),
    };
    /** Which call each events + metrics call is compared with. */
    const without: Record<string, string> = {
      'run(), lease, events + metrics': 'run(), lease mode',
      'run(), tx, events + metrics': 'run(), transactional mode',
    };
    for (let round = 1; round <= ROUNDS; round++) {
      let alone = 0;
      const measured: Record<string, number> = {};
      for (const [label, call] of Object.entries(calls)) {
        for (let i = 0; i < 50; i++) await call(); // warm-up
        const before = process.cpuUsage();
        for (let i = 0; i < CALLS; i++) await call();
        const used = process.cpuUsage(before);
        const micros = (used.user + used.system) / CALLS;
        alone ||= micros;
        measured[label] = micros;
        const off = without[label] && measured[without[label]];
        console.log(
          `round ${round}: ${label.padEnd(32)} ${Math.round(micros).toString().padStart(5)} µs CPU per call, ${(micros / alone).toFixed(2)}× the INSERT alone` +
            (off ? `, ${(micros / off).toFixed(2)}× without events and metrics` : ''),
        );
      }
    }
    if (seen === 0) throw new Error('the onEvent listener saw no event');
    await observed.app.close();
    await app.close();
  } finally {
    await database.drop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
