import { Injectable, type OnModuleInit, type Type } from '@nestjs/common';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';
import { IdempotencyExceptionFilter } from '../http/idempotency.filter.js';
import { IdempotentRoutes } from '../idempotent-routes.js';
import type { Handler } from '../route-metadata.js';
import { MessageIdempotencyInterceptor } from './message.interceptor.js';

/** Where `@UseInterceptors()` and `@UseFilters()` record their enhancers (Nest's metadata keys). */
const INTERCEPTORS = '__interceptors__';
const FILTERS = '__exceptionFilters__';

/**
 * Puts the message interceptor and the problem filter on every idempotent message handler
 * itself. The module also registers them globally, but a hybrid application's
 * microservice (`app.connectMicroservice()`) does not inherit global enhancers unless it
 * passes `inheritAppConfig: true`: without this, its handlers would run unguarded while
 * their author believes them guarded. Where both apply, the interceptor handles each
 * message once (it marks what it has handled).
 *
 * Runs at module initialisation: a hybrid application sets up its microservices' handlers
 * after that. A microservice on its own sets them up before, and uses the global ones.
 */
@Injectable()
export class MessageHandlers implements OnModuleInit {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly routes: IdempotentRoutes,
    private readonly interceptor: MessageIdempotencyInterceptor,
    private readonly filter: IdempotencyExceptionFilter,
  ) {}

  onModuleInit(): void {
    for (const wrapper of this.discovery.getControllers()) {
      const controller = wrapper.metatype as Type | undefined;
      if (!controller?.prototype) continue;
      for (const name of this.scanner.getAllMethodNames(controller.prototype as object)) {
        const handler = (controller.prototype as Record<string, unknown>)[name];
        if (typeof handler !== 'function') continue;
        if (this.routes.of(controller, handler as Handler)?.context !== 'rpc') continue;
        prepend(INTERCEPTORS, this.interceptor, handler);
        prepend(FILTERS, this.filter, handler);
      }
    }
  }
}

/** First among the handler's own enhancers, once (an inherited handler is one function for several controllers). */
function prepend(key: string, enhancer: object, handler: object): void {
  const existing = (Reflect.getMetadata(key, handler) ?? []) as unknown[];
  if (!existing.includes(enhancer)) Reflect.defineMetadata(key, [enhancer, ...existing], handler);
}
