import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';

// The crash test runs the app as a process of its own, to kill it with SIGKILL.
async function main() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL must name the database');
  const holdMs = Number(process.env.PAYMENTS_HOLD_MS ?? 0);
  const app = await NestFactory.create(AppModule.forDatabase(url, { holdMs }), { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  console.log(`listening on ${await app.getUrl()}`);
}

void main();
