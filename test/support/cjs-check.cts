/**
 * Loads the library's CommonJS build (the path in argv[2]) in a CommonJS process and runs
 * one operation twice through IdempotencyService.run(), on the store that STORE names:
 * `redis` (REDIS_URL, KEY_PREFIX) with typeorm, @nestjs/typeorm and pg made unloadable, or
 * `postgres` (DATABASE_URL). Prints one JSON line: both results, the runs, and whether
 * TypeORM was loaded.
 */
import type { DynamicModule, INestApplicationContext, ModuleMetadata, Type } from '@nestjs/common';

/** `require`, typed by the caller: this program loads modules the CommonJS way on purpose. */
const need: (<T>(id: string) => T) & { cache?: object } = require;

interface Library {
  IdempotencyModule: { forRoot(options?: object): DynamicModule };
  IdempotencyService: Type<{ run<T>(options: { name: string; key: string }, operation: () => T): Promise<T> }>;
  idempotencyMigrations: unknown[];
}

const forbidden = /^(typeorm|@nestjs\/typeorm|pg)(\/|$)/;
const loader = need<{ _load: (request: string, ...rest: unknown[]) => unknown }>('node:module');
const load = loader._load;
if (process.env.STORE === 'redis') {
  loader._load = function (this: unknown, request: string, ...rest: unknown[]) {
    if (forbidden.test(request)) throw new Error(`forbidden module "${request}"`);
    return load.call(this, request, ...rest);
  };
  let blocked = false;
  try {
    need('typeorm');
  } catch {
    blocked = true;
  }
  if (!blocked) throw new Error('the guard is not in force');
}

need('reflect-metadata');
const { Module: NestModule } = need<{ Module: (metadata: ModuleMetadata) => ClassDecorator }>('@nestjs/common');
const { NestFactory } = need<{
  NestFactory: { createApplicationContext(module: Type, options: object): Promise<INestApplicationContext> };
}>('@nestjs/core');
const lib = need<Library>(process.argv[2]);

async function main() {
  const imports: DynamicModule[] = [];
  if (process.env.STORE === 'redis') {
    imports.push(
      lib.IdempotencyModule.forRoot({
        redis: { connection: process.env.REDIS_URL, keyPrefix: process.env.KEY_PREFIX },
      }),
    );
  } else {
    const { TypeOrmModule } = need<{ TypeOrmModule: { forRoot(options: object): DynamicModule } }>('@nestjs/typeorm');
    imports.push(
      TypeOrmModule.forRoot({
        type: 'postgres',
        url: process.env.DATABASE_URL,
        migrations: lib.idempotencyMigrations,
        migrationsRun: true,
      }),
      lib.IdempotencyModule.forRoot(),
    );
  }
  class App {}
  NestModule({ imports })(App);
  const app = await NestFactory.createApplicationContext(App, { logger: ['error'] });
  const service = app.get(lib.IdempotencyService);
  let runs = 0;
  const operation = () => ({ run: ++runs });
  const key = process.env.KEY_PREFIX!;
  const first = await service.run({ name: 'cjs-check', key }, operation);
  const second = await service.run({ name: 'cjs-check', key }, operation);
  await app.close();
  const typeormLoaded = Object.keys(need.cache ?? {}).some((path) => /node_modules\/typeorm\//.test(path));
  console.log(JSON.stringify({ first, second, runs, typeormLoaded }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
