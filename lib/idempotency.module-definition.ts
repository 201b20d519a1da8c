import { ConfigurableModuleBuilder, type DynamicModule, Module, type Provider } from '@nestjs/common';
import type { Pool } from 'pg';
import type { DataSource } from 'typeorm';
import type {
  IdempotencyModuleExtras,
  IdempotencyModuleOptions,
  IdempotencyPoolFactory,
} from './idempotency.options.js';
import { IdempotencyStore } from './storage/idempotency.store.js';
import { PostgresIdempotencyStore } from './storage/postgres.store.js';
import { RedisIdempotencyStore } from './storage/redis.store.js';
import { SplitIdempotencyStore } from './storage/split.store.js';

/**
 * `forRoot` / `forRootAsync` (with `useFactory` + `inject` + `imports`, or `useClass`).
 * The extras decide wiring, so they are read when the module is defined, outside the factory.
 */
export const {
  ConfigurableModuleClass: ConfigurableIdempotencyModule,
  MODULE_OPTIONS_TOKEN,
  OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<IdempotencyModuleOptions>({ moduleName: 'Idempotency' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createIdempotencyOptions')
  .setExtras<IdempotencyModuleExtras>({ isGlobal: true }, (definition, extras) => {
    const global = extras.isGlobal ?? true;
    const provider = storeProvider(extras);
    if (provider) {
      return {
        ...definition,
        global,
        imports: [...(definition.imports ?? []), ...(provider.imports ?? [])],
        providers: [...(definition.providers ?? []), provider.provider],
        exports: [...(definition.exports ?? []), IdempotencyStore],
      };
    }
    const postgres = postgresStoreModule(extras);
    return { ...definition, global, imports: [...(definition.imports ?? []), postgres] };
  })
  .build();

interface StoreProvider {
  provider: Provider;
  imports?: IdempotencyPoolFactory['imports'];
}

/** The store's provider, or undefined for the PostgreSQL store on a TypeORM DataSource (see `postgresStoreModule`). */
function storeProvider({
  store,
  redis,
  pool,
  dataSource,
  preparedStatements,
}: IdempotencyModuleExtras): StoreProvider | undefined {
  const given = [store && '"store"', redis && '"redis"', pool && '"pool"', dataSource && '"dataSource"'].filter(
    Boolean,
  );
  // Redis beside PostgreSQL (transactionalRoutes: 'postgres') is the one combination.
  const combined = given.length === 2 && redis && redis.transactionalRoutes === 'postgres' && !store;
  if (given.length > 1 && !combined) {
    throw new Error(`IdempotencyModule: give one of ${given.join(', ')}, not several.`);
  }
  if (store) return { provider: { provide: IdempotencyStore, useClass: store } };
  if (redis && (redis.transactionalRoutes ?? 'refuse') === 'refuse') {
    return { provider: { provide: IdempotencyStore, useFactory: () => RedisIdempotencyStore.create(redis) } };
  }
  if (!pool) return undefined;
  const factory: IdempotencyPoolFactory = isPoolFactory(pool) ? pool : { useFactory: () => pool };
  return {
    imports: factory.imports,
    provider: {
      provide: IdempotencyStore,
      inject: factory.inject ?? [],
      useFactory: async (...dependencies: unknown[]) =>
        postgresStore(await factory.useFactory(...dependencies), { redis, preparedStatements }),
    },
  };
}

/** The PostgreSQL store on `source`: alone, or for the transactional routes beside Redis. */
async function postgresStore(
  source: DataSource | Pool,
  { redis, preparedStatements }: Pick<IdempotencyModuleExtras, 'redis' | 'preparedStatements'>,
): Promise<IdempotencyStore> {
  const postgres = new PostgresIdempotencyStore(source, { preparedStatements });
  return redis ? new SplitIdempotencyStore(await RedisIdempotencyStore.create(redis), postgres) : postgres;
}

function isPoolFactory(pool: Pool | IdempotencyPoolFactory): pool is IdempotencyPoolFactory {
  return typeof (pool as Partial<IdempotencyPoolFactory>).useFactory === 'function';
}

@Module({})
class IdempotencyPostgresStoreModule {}

/**
 * The PostgreSQL store on the application's TypeORM DataSource (alone, or for the
 * transactional routes beside Redis), in a module of its own that Nest awaits while it
 * scans the imports: `@nestjs/typeorm` (which loads TypeORM) is imported only here, so an
 * application on another store never loads either. The module is global, since
 * IdempotencyModule cannot re-export a provider it imports this way.
 */
async function postgresStoreModule({
  dataSource,
  redis,
  preparedStatements,
}: IdempotencyModuleExtras): Promise<DynamicModule> {
  const { getDataSourceToken } = await import('@nestjs/typeorm');
  const token = getDataSourceToken(dataSource);
  return {
    module: IdempotencyPostgresStoreModule,
    global: true,
    providers: [
      {
        provide: IdempotencyStore,
        inject: [{ token, optional: true }],
        useFactory: async (source?: DataSource) => {
          if (!source) {
            const named = dataSource ? ` named "${dataSource}"` : '';
            throw new Error(
              `IdempotencyModule: no TypeORM DataSource${named} found. Import TypeOrmModule.forRoot(` +
                `${dataSource ? `{ name: '${dataSource}', ... }` : '...'}) in your application module, ` +
                'or pass IdempotencyModule.forRoot({ store: MemoryIdempotencyStore }) for unit tests.',
            );
          }
          return postgresStore(source, { redis, preparedStatements });
        },
      },
    ],
    exports: [IdempotencyStore],
  };
}
