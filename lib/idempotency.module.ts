import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER, APP_INTERCEPTOR, DiscoveryModule, DiscoveryService, MetadataScanner } from '@nestjs/core';
import { IdempotentRoutes } from './idempotent-routes.js';
import { IdempotentTransaction } from './core/idempotent-transaction.js';
import { IdempotencyExceptionFilter } from './http/idempotency.filter.js';
import { IdempotencyInterceptor } from './http/idempotency.interceptor.js';
import { IdempotentMethods } from './method/idempotent-methods.js';
import { MessageIdempotencyInterceptor } from './microservices/message.interceptor.js';
import { ConfigurableIdempotencyModule, OPTIONS_TYPE } from './idempotency.module-definition.js';
import { IdempotencyService } from './core/idempotency.service.js';
import { documentIdempotentRoutes, OPENAPI_DOCUMENTED } from './observability/openapi.js';

/**
 * `IdempotencyModule.forRoot({...})` or `.forRootAsync({ useFactory, inject, imports })`,
 * once, in the application module. It registers the HTTP and message interceptors and the
 * problem filter globally, and binds `@IdempotentMethod()` methods to this application:
 * the decorators are all that is needed then.
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    IdempotentRoutes,
    IdempotencyService,
    IdempotentMethods,
    { provide: APP_INTERCEPTOR, useClass: IdempotencyInterceptor },
    { provide: APP_INTERCEPTOR, useClass: MessageIdempotencyInterceptor },
    { provide: APP_FILTER, useClass: IdempotencyExceptionFilter },
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
    return super.forRoot(options);
  }
}
