import { ConfigurableModuleBuilder, type Provider } from '@nestjs/common';
import { getDataSourceToken } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import type { IdempotencyModuleExtras, IdempotencyModuleOptions } from './idempotency.options.js';
import { IdempotencyStore } from './storage/idempotency.store.js';
import { PostgresIdempotencyStore } from './storage/postgres.store.js';

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
  .setExtras<IdempotencyModuleExtras>({ isGlobal: true }, (definition, extras) => ({
    ...definition,
    global: extras.isGlobal ?? true,
    providers: [...(definition.providers ?? []), storeProvider(extras)],
    exports: [...(definition.exports ?? []), IdempotencyStore],
  }))
  .build();

function storeProvider({ store, dataSource }: IdempotencyModuleExtras): Provider {
  if (store) return { provide: IdempotencyStore, useClass: store };
  const token = getDataSourceToken(dataSource);
  return {
    provide: IdempotencyStore,
    inject: [{ token, optional: true }],
    useFactory: (source?: DataSource) => {
      if (!source) {
        const named = dataSource ? ` named "${dataSource}"` : '';
        throw new Error(
          `IdempotencyModule: no TypeORM DataSource${named} found. Import TypeOrmModule.forRoot(` +
            `${dataSource ? `{ name: '${dataSource}', ... }` : '...'}) in your application module, ` +
            'or pass IdempotencyModule.forRoot({ store: MemoryIdempotencyStore }) for unit tests.',
        );
      }
      return new PostgresIdempotencyStore(source);
    },
  };
}
