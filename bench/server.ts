import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import pg from 'pg';
import { benchCounters, BenchModule } from './bench-app.js';

// Counts every statement the app sends: each pg query() is one round trip. TypeORM and
// the library both use this driver, so the count covers the handler and the library.
// eslint-disable-next-line @typescript-eslint/unbound-method -- re-bound with apply() below
const query = pg.Client.prototype.query;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  benchCounters.queries++;
  return (query as (...a: unknown[]) => unknown).apply(this, args);
} as typeof query;

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is required');
  const redisUrl = process.env.BENCH_REDIS_URL;
  if (redisUrl) await countRedisCommands();
  const redis = redisUrl ? { url: redisUrl, prefix: process.env.BENCH_REDIS_PREFIX ?? 'bench:' } : undefined;
  const app = await NestFactory.create(BenchModule.forRoot(url, redis), { logger: ['error', 'warn'] });
  // Requests are counted where the queries are, so that requests still in flight when a
  // run ends weigh on neither side of "round trips per request".
  app.use((request: { url: string }, response: { once(event: string, done: () => void): void }, next: () => void) => {
    if (!request.url.startsWith('/__bench')) response.once('finish', () => benchCounters.requests++);
    next();
  });
  await app.listen(0, '127.0.0.1');
  const address = app.getHttpServer().address();
  console.log(`listening on port ${address.port}`);
  process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
}

/** Redis commands are round trips too (pub/sub bookkeeping aside): counted with the SQL ones. */
async function countRedisCommands(): Promise<void> {
  const { Redis } = await import('ioredis');
  const prototype = Redis.prototype as unknown as { sendCommand(command: { name: string }): unknown };
  // eslint-disable-next-line @typescript-eslint/unbound-method -- re-bound with call() below
  const send = prototype.sendCommand;
  prototype.sendCommand = function (this: unknown, command: { name: string }) {
    if (!/subscribe$/i.test(command.name)) benchCounters.queries++;
    return send.call(this, command);
  };
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
