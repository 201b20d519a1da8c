import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource } from 'typeorm';
import { IdempotencyModule, IdempotencyService } from '../lib/index.js';
import { benchDatabase } from './database.js';

/**
 * `npm run build && node dist/bench/cpu-per-call.js`: the process's CPU time per call,
 * one call at a time (no HTTP, no concurrency, so no group commit), for one INSERT alone,
 * in a TypeORM transaction, and through `IdempotencyService.run()` in each mode; each as a
 * ratio to the plain INSERT of the same round. It isolates what the library's own work and
 * statements cost the application per first execution.
 */
const CALLS = Number(process.env.CALLS ?? 1000);
const ROUNDS = 3;
const INSERT = "INSERT INTO payments (user_id, amount, currency, status) VALUES ('bench', 1000, 'EUR', 'succeeded')";

async function main(): Promise<void> {
  const database = await benchDatabase('idem_cpu_');
  try {
    @Module({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: database.url, extra: { max: 10 } }),
        IdempotencyModule.forRoot({ fingerprintSecret: 'the cpu-per-call bench secret' }),
      ],
    })
    class CpuModule {}
    const app = await NestFactory.createApplicationContext(CpuModule, { logger: false });
    const service = app.get(IdempotencyService);
    const dataSource = app.get(DataSource);
    const calls: Record<string, () => Promise<unknown>> = {
      'INSERT alone': () => dataSource.query(INSERT),
      'INSERT in a TypeORM transaction': () => dataSource.transaction((manager) => manager.query(INSERT)),
      'run(), lease mode': () =>
        service.run({ key: randomUUID(), name: 'lease', payload: { amount: 1000 } }, () => dataSource.query(INSERT)),
      'run(), transactional mode': () =>
        service.run({ key: randomUUID(), name: 'tx', payload: { amount: 1000 }, transactional: true }, (manager) =>
          manager.query(INSERT),
        ),
    };
    for (let round = 1; round <= ROUNDS; round++) {
      let alone = 0;
      for (const [label, call] of Object.entries(calls)) {
        for (let i = 0; i < 50; i++) await call(); // warm-up
        const before = process.cpuUsage();
        for (let i = 0; i < CALLS; i++) await call();
        const used = process.cpuUsage(before);
        const micros = (used.user + used.system) / CALLS;
        alone ||= micros;
        console.log(
          `round ${round}: ${label.padEnd(32)} ${Math.round(micros).toString().padStart(5)} µs CPU per call, ${(micros / alone).toFixed(2)}× the INSERT alone`,
        );
      }
    }
    await app.close();
  } finally {
    await database.drop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
