import { Inject, Injectable, type OnModuleInit, type Type } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { IDEMPOTENT_METADATA } from './idempotent.decorator.js';
import { MODULE_OPTIONS_TOKEN } from './idempotency.module-definition.js';
import {
  type IdempotencyModuleOptions,
  type IdempotentRouteOptions,
  type ResolvedRouteOptions,
  resolveRouteOptions,
  validateOptions,
} from './idempotency.options.js';
import {
  type Handler,
  hostOf,
  nameOf,
  isHttpHandler,
  isMessageHandler,
  isServerSentEvents,
  pathsOf,
  safeMethodOf,
  versionOf,
  writesResponseItself,
} from './route-metadata.js';
import { routePattern } from './http/request-identity.js';
import { IdempotencyStore } from './storage/idempotency.store.js';

/** Everything the interceptor needs about one idempotent handler of one controller, computed once. */
export interface IdempotentRoute {
  readonly options: ResolvedRouteOptions;
  /** The route from the decorators alone (controller path + method path), for platforms that do not say which route matched. */
  readonly declaredPattern: string;
  /** What tells apart handlers served on the same path: their host pattern and version. */
  readonly qualifier: string;
  /** Request header name to read, lower-case. */
  readonly keyHeader: string;
  /**
   * Whether safe requests (GET, HEAD, ...) pass through untouched: under a class-wide
   * `@Idempotent()`. A method-level one on an `@All()` route guards every method.
   */
  readonly safeMethodsPass: boolean;
}

/**
 * Finds the `@Idempotent()` routes and their merged options. At start-up it checks every
 * decorated method of every controller and provider, so that a route that cannot be made
 * idempotent fails the boot, not a request, and a decorated method the library does not
 * guard is never left to run unguarded.
 *
 * Routes are looked up per (controller, handler): a method inherited by two controllers
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
  ) {}

  onModuleInit(): void {
    const instances = this.discovery.getProviders().filter((wrapper) => wrapper.metatype === IdempotentRoutes).length;
    if (instances > 1) {
      // Each import registers a global interceptor: every request would be claimed twice and
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
        if (isHttpHandler(handler)) this.of(controller, handler);
        else this.refuseOutsideHttp(controller, handler);
      }
    }
    for (const wrapper of this.discovery.getProviders()) {
      const provider = wrapper.metatype as Type | undefined;
      if (typeof provider !== 'function' || !provider.prototype || controllers.has(provider)) continue;
      for (const handler of this.methodsOf(provider)) this.refuseOutsideHttp(provider, handler);
    }
  }

  /** The idempotent route for a handler of a controller, or null when it is not idempotent. */
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
    const safeMethod = safeMethodOf(handler);
    if (safeMethod) {
      // A class-wide @Idempotent() covers the routes that change state; reads stay untouched.
      if (!onMethod) return null;
      throw new Error(
        `@Idempotent() on ${where}: ${safeMethod} is a safe method, which must not change state and ` +
          'needs no idempotency key. Remove the decorator, or serve the operation with POST, PUT, PATCH or DELETE.',
      );
    }
    const options = resolveRouteOptions(this.moduleOptions, onClass, onMethod);
    validateOptions(options, where);
    this.assertReplayable(controller, handler, where);
    if (options.transactional && !options.required) {
      throw new Error(
        `@Idempotent() on ${where} is transactional with required: false: a request without a key ` +
          'would run without the transaction its handler expects. Make the key required.',
      );
    }
    if (options.transactional && !this.store.supportsTransactions) {
      throw new Error(
        `@Idempotent() on ${where} is transactional, but ${this.store.constructor.name} has no transactions: ` +
          'transactional routes need the PostgreSQL store.',
      );
    }
    const host = hostOf(controller);
    const version = versionOf(controller, handler);
    return {
      options,
      declaredPattern: routePattern(pathsOf(controller), pathsOf(handler)),
      qualifier: (host === undefined ? '' : ` host=${host}`) + (version === undefined ? '' : ` version=${version}`),
      keyHeader: options.headerName.toLowerCase(),
      safeMethodsPass: !onMethod,
    };
  }

  /**
   * A decorated method that is not an HTTP route handler would run without any protection
   * while its author believes it is guarded: refuse to start instead.
   */
  private refuseOutsideHttp(owner: Type, handler: Handler): void {
    const onMethod = this.reflector.get(IDEMPOTENT_METADATA, handler) !== undefined;
    const onClass = this.reflector.get(IDEMPOTENT_METADATA, owner) !== undefined;
    if (!onMethod && !(onClass && isMessageHandler(handler))) return;
    throw new Error(
      `@Idempotent() on ${owner.name}.${nameOf(handler)}: it is not an HTTP route handler, and the library ` +
        'guards HTTP routes only (not message, event or websocket handlers, nor other methods), so it would ' +
        'run unprotected. Remove the decorator, or make the operation an HTTP route.',
    );
  }

  private *methodsOf(type: Type): Iterable<Handler> {
    for (const name of this.scanner.getAllMethodNames(type.prototype as object)) {
      const method = (type.prototype as Record<string, unknown>)[name];
      if (typeof method === 'function') yield method as Handler;
    }
  }

  /** Responses that bypass Nest's reply cannot be captured, so they could never be replayed. */
  private assertReplayable(controller: Type, handler: Handler, where: string): void {
    if (isServerSentEvents(handler)) {
      throw new Error(`@Idempotent() cannot be used on ${where}: server-sent events cannot be replayed.`);
    }
    if (writesResponseItself(controller, handler)) {
      throw new Error(
        `@Idempotent() cannot be used on ${where}: it writes the response itself (@Res() or @Next()), ` +
          'so the response cannot be stored. Return the body instead, or use @Res({ passthrough: true }).',
      );
    }
  }
}

/**
 * The route a request was served by, as stored in its record: the path pattern the
 * platform matched (global prefix, `RouterModule` prefixes and URI version included),
 * then the handler's host pattern and version, which tell apart handlers that share a path
 * (header, media-type and custom versioning; host-based routing).
 */
export function servedRoute(route: IdempotentRoute, request: unknown): string {
  const { route: expressRoute, routeOptions } = request as {
    route?: { path?: unknown };
    routeOptions?: { url?: unknown };
  };
  const matched = typeof expressRoute?.path === 'string' ? expressRoute.path : routeOptions?.url;
  return (typeof matched === 'string' ? matched : route.declaredPattern) + route.qualifier;
}
