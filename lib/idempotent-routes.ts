import { Inject, Injectable, type OnModuleInit, Optional, type Type } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { type HttpRoute, httpRouteOf } from './http/http-route.js';
import { IDEMPOTENT_METADATA } from './idempotent.decorator.js';
import { MODULE_OPTIONS_TOKEN } from './idempotency.module-definition.js';
import { type IdempotencyModuleOptions, type IdempotentRouteOptions } from './idempotency.options.js';
import { resolveRouteOptions, validateOptions } from './options-resolution.js';
import { type MessageRoute, messageRouteOf } from './microservices/message-route.js';
import {
  type Handler,
  isHttpHandler,
  isMessageHandler,
  isWebsocketHandler,
  nameOf,
  namesInterceptor,
} from './route-metadata.js';
import { IdempotencyStore } from './storage/idempotency.store.js';

/**
 * Provided with `global: false`: the interceptors each controller must name itself (given
 * by the module, which imports them; this file cannot without an import cycle).
 */
export const LOCAL_ENHANCERS_ONLY = Symbol('idempotency:local-enhancers-only');

/** The interceptor classes a controller names with `global: false`. */
export interface LocalEnhancers {
  readonly http: Type;
  readonly rpc: Type;
}

/** An idempotent handler, in the context it serves. */
export type IdempotentRoute = HttpRoute | MessageRoute;

/**
 * Finds the `@Idempotent()` handlers and their merged options. At start-up it checks every
 * decorated method of every controller and provider, so that a handler that cannot be
 * made idempotent fails the boot, not a request, and a decorated method the library does
 * not guard is never left to run unguarded.
 *
 * Handlers are looked up per (controller, handler): a method inherited by two controllers
 * is one function but two routes.
 */
@Injectable()
export class IdempotentRoutes implements OnModuleInit {
  private readonly cache = new WeakMap<Type, Map<Handler, IdempotentRoute | null>>();

  constructor(
    private readonly reflector: Reflector,
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly store: IdempotencyStore,
    @Inject(MODULE_OPTIONS_TOKEN) private readonly moduleOptions: IdempotencyModuleOptions,
    @Optional() @Inject(LOCAL_ENHANCERS_ONLY) private readonly localEnhancers?: LocalEnhancers,
  ) {}

  onModuleInit(): void {
    const instances = this.discovery.getProviders().filter((wrapper) => wrapper.metatype === IdempotentRoutes).length;
    if (instances > 1) {
      // Each import registers global interceptors: every request would be claimed twice and
      // answer 409 to itself.
      throw new Error(
        `IdempotencyModule is imported ${instances} times. Import IdempotencyModule.forRoot() (or forRootAsync()) ` +
          'once, in the root module: it is global, so feature modules need no import of their own.',
      );
    }
    validateOptions(resolveRouteOptions(this.moduleOptions), 'module options');
    const controllers = new Set<Type>();
    for (const wrapper of this.discovery.getControllers()) {
      const controller = wrapper.metatype as Type | undefined;
      if (!controller?.prototype) continue;
      controllers.add(controller);
      for (const handler of this.methodsOf(controller)) {
        if (isHttpHandler(handler) || isMessageHandler(handler)) this.refuseUnregistered(controller, handler);
        else this.refuseUnguarded(controller, handler);
      }
    }
    for (const wrapper of this.discovery.getProviders()) {
      const provider = wrapper.metatype as Type | undefined;
      if (typeof provider !== 'function' || !provider.prototype || controllers.has(provider)) continue;
      for (const handler of this.methodsOf(provider)) this.refuseUnguarded(provider, handler);
    }
  }

  /** The idempotent route of a handler of a controller, or null when it is not idempotent. */
  of(controller: Type, handler: Handler): IdempotentRoute | null {
    let routes = this.cache.get(controller);
    if (!routes) this.cache.set(controller, (routes = new Map<Handler, IdempotentRoute | null>()));
    let route = routes.get(handler);
    if (route === undefined) {
      route = this.build(controller, handler);
      routes.set(handler, route);
    }
    return route;
  }

  private build(controller: Type, handler: Handler): IdempotentRoute | null {
    const onClass = this.reflector.get<IdempotentRouteOptions | undefined>(IDEMPOTENT_METADATA, controller);
    const onMethod = this.reflector.get<IdempotentRouteOptions | undefined>(IDEMPOTENT_METADATA, handler);
    if (!onClass && !onMethod) return null;
    const where = `${controller.name}.${nameOf(handler)}`;
    const options = resolveRouteOptions(this.moduleOptions, onClass, onMethod);
    validateOptions(options, where);
    if (options.transactional && !this.store.supportsTransactions) {
      throw new Error(
        `@Idempotent() on ${where} is transactional, but ${this.store.constructor.name} has no transactions: ` +
          'transactional handlers need the PostgreSQL store.',
      );
    }
    const decorators = { onClass, onMethod };
    if (isMessageHandler(handler)) return messageRouteOf(handler, decorators, options, this.moduleOptions, where);
    return httpRouteOf(controller, handler, decorators, options, where);
  }

  /**
   * With `global: false`, an idempotent route whose controller does not name the
   * interceptor would run every duplicate while its author believes it guarded.
   */
  private refuseUnregistered(controller: Type, handler: Handler): void {
    const route = this.of(controller, handler);
    if (!route || !this.localEnhancers) return;
    const interceptor = route.context === 'http' ? this.localEnhancers.http : this.localEnhancers.rpc;
    if (namesInterceptor(controller, handler, interceptor)) return;
    throw new Error(
      `@Idempotent() on ${controller.name}.${nameOf(handler)}: IdempotencyModule has global: false, and neither ` +
        `the controller nor the method names the interceptor. Add @UseInterceptors(${interceptor.name}) ` +
        '(and @UseFilters(IdempotencyExceptionFilter) for problem+json errors) to the controller, or drop global: false.',
    );
  }

  /**
   * A decorated method that is neither an HTTP route nor a message handler would run
   * without any protection while its author believes it is guarded: refuse to start instead.
   */
  private refuseUnguarded(owner: Type, handler: Handler): void {
    const onMethod = this.reflector.get(IDEMPOTENT_METADATA, handler) !== undefined;
    const onClass = this.reflector.get(IDEMPOTENT_METADATA, owner) !== undefined;
    if (!onMethod && !(onClass && isWebsocketHandler(handler))) return;
    throw new Error(
      `@Idempotent() on ${owner.name}.${nameOf(handler)}: it is neither an HTTP route nor a message handler of a ` +
        'controller (websocket handlers and provider methods are not guarded by it), so it would run unprotected. ' +
        'For a provider method (a job processor, a scheduled task), use @IdempotentMethod({ key }) instead.',
    );
  }

  private *methodsOf(type: Type): Iterable<Handler> {
    for (const name of this.scanner.getAllMethodNames(type.prototype as object)) {
      const method = (type.prototype as Record<string, unknown>)[name];
      if (typeof method === 'function') yield method as Handler;
    }
  }
}
