import { forbidTypeorm } from './without-typeorm.js';

/**
 * The pool application (pool-app.ts) as a process of its own, with TypeORM and
 * `@nestjs/typeorm` made unloadable first (`pg` stays): it starts only if nothing on its
 * way loads them. Env: DATABASE_URL, LEASE_MS. Prints `listening on port <n>`, then `ready`.
 */
await forbidTypeorm({ allowPg: true });

await import('reflect-metadata');
const { NestFactory } = await import('@nestjs/core');
const { PoolAppModule } = await import('./pool-app.js');

const app = await NestFactory.create(
  PoolAppModule.forRoot({
    databaseUrl: process.env.DATABASE_URL!,
    leaseMs: process.env.LEASE_MS ? Number(process.env.LEASE_MS) : undefined,
  }),
  { logger: ['error', 'warn', 'log'] },
);
app.enableShutdownHooks();
await app.listen(0, '127.0.0.1');
const address = app.getHttpServer().address() as { port: number };
console.log(`listening on port ${address.port}`);
console.log('ready');
