import { type DynamicModule, Module, type Provider } from '@nestjs/common';
import { APP_FILTER, APP_INTERCEPTOR, DiscoveryModule, DiscoveryService, MetadataScanner } from '@nestjs/core';
import { IdempotentRoutes, LOCAL_ENHANCERS_ONLY, type LocalEnhancers } from './idempotent-routes.js';
import { IdempotentTransaction } from './core/idempotent-transaction.js';
import { IdempotencyExceptionFilter } from './http/idempotency.filter.js';
import { IdempotencyInterceptor } from './http/idempotency.interceptor.js';
import { IdempotentMethods } from './method/idempotent-methods.js';
import { MessageIdempotencyInterceptor } from './microservices/message.interceptor.js';
import { ASYNC_OPTIONS_TYPE, ConfigurableIdempotencyModule, OPTIONS_TYPE } from './idempotency.module-definition.js';
import { IdempotencyService } from './core/idempotency.service.js';
import { documentIdempotentRoutes, OPENAPI_DOCUMENTED } from './observability/openapi.js';

/**
 * `IdempotencyModule.forRoot({...})` or `.forRootAsync({ useFactory, inject, imports })`,
 * once, in the application module. It registers the HTTP and message interceptors and the
 * problem filter globally (unless `global: false`), and binds `@IdempotentMethod()` methods to this application:
 * the decorators are all that is needed then.
 */
/** What `global: true` registers for the whole application. */
const APPLICATION_ENHANCERS: Provider[] = [
  { provide: APP_INTERCEPTOR, useClass: IdempotencyInterceptor },
  { provide: APP_INTERCEPTOR, useClass: MessageIdempotencyInterceptor },
  { provide: APP_FILTER, useClass: IdempotencyExceptionFilter },
];

/** With `global: false`, the same classes as providers, for controllers to name in `@UseInterceptors` / `@UseFilters`. */
const LOCAL_ENHANCERS = [IdempotencyInterceptor, MessageIdempotencyInterceptor, IdempotencyExceptionFilter];

@Module({
  imports: [DiscoveryModule],
  providers: [
    IdempotentRoutes,
    IdempotencyService,
    IdempotentMethods,
    IdempotentTransaction,
    // With @nestjs/swagger installed, documents the idempotent routes before any document is built.
    {
      provide: OPENAPI_DOCUMENTED,
      inject: [IdempotentRoutes, DiscoveryService, MetadataScanner],
      useFactory: documentIdempotentRoutes,
    },
  ],
  exports: [IdempotencyService, IdempotentTransaction],
})
export class IdempotencyModule extends ConfigurableIdempotencyModule {
  /** Every option has a default, so `forRoot()` alone is a complete configuration. */
  static override forRoot(options: typeof OPTIONS_TYPE = {}): DynamicModule {
    return withEnhancers(super.forRoot(options), options.global);
  }

  static override forRootAsync(options: typeof ASYNC_OPTIONS_TYPE): DynamicModule {
    return withEnhancers(super.forRootAsync(options), options.global);
  }
}

function withEnhancers(definition: DynamicModule, global = true): DynamicModule {
  if (global) return { ...definition, providers: [...(definition.providers ?? []), ...APPLICATION_ENHANCERS] };
  return {
    ...definition,
    providers: [
      ...(definition.providers ?? []),
      ...LOCAL_ENHANCERS,
      {
        provide: LOCAL_ENHANCERS_ONLY,
        useValue: { http: IdempotencyInterceptor, rpc: MessageIdempotencyInterceptor } satisfies LocalEnhancers,
      },
    ],
    // What the enhancers inject, for Nest to build them in the modules of the controllers that name them.
    exports: [...(definition.exports ?? []), ...LOCAL_ENHANCERS, IdempotentRoutes],
  };
}
