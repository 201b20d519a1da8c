import { applyDecorators, SetMetadata, UseInterceptors } from '@nestjs/common';
import type { IdempotentRouteOptions } from './idempotency.options.js';
import { UnguardedMessageCheck } from './microservices/unguarded-message.check.js';

/** Metadata key under which `@Idempotent()` records its route options (namespaced: not a DI token). */
export const IDEMPOTENT_METADATA = 'nestjs-idempotency:route-options';

/**
 * Makes a route safe to retry: the first request with an `Idempotency-Key` runs, later
 * ones with the same key (sequential or parallel, on any instance) receive the stored
 * response. Put it on a controller method, or on a controller to cover all its routes;
 * method options override controller options, which override the module's.
 *
 * It records metadata: the interceptor that does the work is registered by
 * `IdempotencyModule`. It also attaches a check that refuses a message reaching a handler
 * without that interceptor (a hybrid application's microservice connected without
 * `inheritAppConfig: true`), which would otherwise run unguarded.
 */
export const Idempotent = (options: IdempotentRouteOptions = {}): ClassDecorator & MethodDecorator =>
  applyDecorators(SetMetadata(IDEMPOTENT_METADATA, options), UseInterceptors(UnguardedMessageCheck));
