import { forbidTypeorm } from './without-typeorm.js';

/**
 * The Redis test application (redis-app.ts) as a process of its own, with TypeORM,
 * `@nestjs/typeorm` and `pg` made unloadable first: it starts only if nothing on its way
 * loads them. Env: REDIS_URL, KEY_PREFIX, LEASE_MS, WAIT_TIMEOUT_MS, FALLBACK_POLL_MS;
 * REDIS_CLUSTER_NODES (`host:port,...`): the store on that Redis Cluster instead (the run
 * counters stay on REDIS_URL).
 * Prints `listening on port <n>`, then `ready`.
 */
await forbidTypeorm();

await import('reflect-metadata');
const { NestFactory } = await import('@nestjs/core');
const { redisAppModule } = await import('./redis-app.js');
const { Cluster } = await import('ioredis');

const number = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
/** Only the settings the environment gives: an undefined option would override a default. */
const given = <T extends object>(options: T): T =>
  Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as T;
const app = await NestFactory.create(
  redisAppModule({
    redisUrl: process.env.REDIS_URL!,
    connection: process.env.REDIS_CLUSTER_NODES
      ? new Cluster(
          process.env.REDIS_CLUSTER_NODES.split(',').map((node) => {
            const [host, port] = node.split(':');
            return { host, port: Number(port) };
          }),
        )
      : undefined,
    prefix: process.env.KEY_PREFIX!,
    options: given({ leaseMs: number('LEASE_MS'), waitTimeoutMs: number('WAIT_TIMEOUT_MS') }),
    store: given({ fallbackPollMs: number('FALLBACK_POLL_MS') }),
  }),
  { logger: ['error', 'warn', 'log'] },
);
app.enableShutdownHooks();
await app.listen(0, '127.0.0.1');
const address = app.getHttpServer().address() as { port: number };
console.log(`listening on port ${address.port}`);
console.log('ready');
