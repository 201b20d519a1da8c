import { Inject, Injectable, type OnModuleInit, type Type } from '@nestjs/common';
import {
  PATH_METADATA,
  RESPONSE_PASSTHROUGH_METADATA,
  ROUTE_ARGS_METADATA,
  SSE_METADATA,
} from '@nestjs/common/constants.js';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum.js';
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
import { routePattern } from './request-identity.js';
import { IdempotencyStore } from './storage/idempotency.store.js';

/** Everything the interceptor needs about one idempotent handler, computed once. */
export interface IdempotentRoute {
  readonly options: ResolvedRouteOptions;
  /** Route pattern stored in the record, e.g. `/payments`. */
  readonly pattern: string;
  /** Request header names to read, lower-case. */
  readonly keyHeader: string;
}

/**
 * Finds the `@Idempotent()` routes and their merged options. At start-up it checks every
 * one of them, so that a route that cannot be made idempotent fails the boot, not a request.
 */
@Injectable()
export class IdempotentRoutes implements OnModuleInit {
  private readonly cache = new WeakMap<Function, IdempotentRoute | null>();

  constructor(
    private readonly reflector: Reflector,
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly store: IdempotencyStore,
    @Inject(MODULE_OPTIONS_TOKEN) private readonly moduleOptions: IdempotencyModuleOptions,
  ) {}

  onModuleInit(): void {
    validateOptions(resolveRouteOptions(this.moduleOptions), 'module options');
    for (const wrapper of this.discovery.getControllers()) {
      const controller = wrapper.metatype as Type | undefined;
      if (!controller?.prototype) continue;
      for (const name of this.scanner.getAllMethodNames(controller.prototype)) {
        const handler = controller.prototype[name];
        if (Reflect.getMetadata(PATH_METADATA, handler) === undefined) continue;
        this.of(controller, handler);
      }
    }
  }

  /** The idempotent route for a handler, or null when it is not idempotent. */
  of(controller: Type, handler: Function): IdempotentRoute | null {
    let route = this.cache.get(handler);
    if (route === undefined) {
      route = this.build(controller, handler);
      this.cache.set(handler, route);
    }
    return route;
  }

  private build(controller: Type, handler: Function): IdempotentRoute | null {
    const onClass = this.reflector.get<IdempotentRouteOptions | undefined>(IDEMPOTENT_METADATA, controller);
    const onMethod = this.reflector.get<IdempotentRouteOptions | undefined>(IDEMPOTENT_METADATA, handler);
    if (!onClass && !onMethod) return null;
    const where = `${controller.name}.${handler.name}`;
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
    return {
      options,
      pattern: routePattern(Reflect.getMetadata(PATH_METADATA, controller), Reflect.getMetadata(PATH_METADATA, handler)),
      keyHeader: options.headerName.toLowerCase(),
    };
  }

  /** Responses that bypass Nest's reply cannot be captured, so they could never be replayed. */
  private assertReplayable(controller: Type, handler: Function, where: string): void {
    if (Reflect.getMetadata(SSE_METADATA, handler)) {
      throw new Error(`@Idempotent() cannot be used on ${where}: server-sent events cannot be replayed.`);
    }
    const args: Record<string, unknown> = Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, handler.name) ?? {};
    const takesResponse = Object.keys(args).some((key) => {
      const type = Number(key.split(':')[0]);
      return type === RouteParamtypes.RESPONSE || type === RouteParamtypes.NEXT;
    });
    if (takesResponse && !Reflect.getMetadata(RESPONSE_PASSTHROUGH_METADATA, controller, handler.name)) {
      throw new Error(
        `@Idempotent() cannot be used on ${where}: it writes the response itself (@Res() or @Next()), ` +
          'so the response cannot be stored. Return the body instead, or use @Res({ passthrough: true }).',
      );
    }
  }
}
