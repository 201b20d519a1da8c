import type { Type } from '@nestjs/common';
import { type IdempotentRouteOptions, type ResolvedRouteOptions } from '../idempotency.options.js';
import {
  type Handler,
  hostOf,
  isServerSentEvents,
  pathsOf,
  safeMethodOf,
  versionOf,
  writesResponseItself,
} from '../route-metadata.js';
import { assertKeyedTransaction, MAX_TIMER_MS } from '../options-resolution.js';
import { routePattern } from './request-identity.js';

/** Everything the HTTP interceptor needs about one idempotent handler of one controller, computed once. */
export interface HttpRoute {
  readonly context: 'http';
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
  /** With `derive`: how long a derived key's record is replayed, counted from completion. */
  readonly deriveWindowMs?: number;
}

/**
 * The HTTP route of a decorated handler, or null for a safe method under a class-wide
 * `@Idempotent()`. Throws for what cannot be made idempotent, so that it fails the boot.
 */
export function httpRouteOf(
  controller: Type,
  handler: Handler,
  decorators: { onClass?: IdempotentRouteOptions; onMethod?: IdempotentRouteOptions },
  options: ResolvedRouteOptions,
  where: string,
): HttpRoute | null {
  const { onClass, onMethod } = decorators;
  const safeMethod = safeMethodOf(handler);
  if (safeMethod) {
    // A class-wide @Idempotent() covers the routes that change state; reads stay untouched.
    if (!onMethod) return null;
    throw new Error(
      `@Idempotent() on ${where}: ${safeMethod} is a safe method, which must not change state and ` +
        'needs no idempotency key. Remove the decorator, or serve the operation with POST, PUT, PATCH or DELETE.',
    );
  }
  for (const name of ['key', 'acknowledge'] as const) {
    if (onClass?.[name] !== undefined || onMethod?.[name] !== undefined) {
      throw new Error(
        `@Idempotent() on ${where}: "${name}" is for message handlers; an HTTP request's key comes from the ` +
          `${options.headerName} header (or from "derive").`,
      );
    }
  }
  assertReplayable(controller, handler, where);
  const derive = onMethod?.derive ?? onClass?.derive;
  const windowMs = derive === undefined ? undefined : deriveWindowOf(derive, where);
  assertKeyedTransaction(
    options.transactional && !options.required && windowMs === undefined,
    `@Idempotent() on ${where}`,
    'request (neither sent nor derived)',
  );
  const host = hostOf(controller);
  const version = versionOf(controller, handler);
  return {
    context: 'http',
    options,
    declaredPattern: routePattern(pathsOf(controller), pathsOf(handler)),
    qualifier: (host === undefined ? '' : ` host=${host}`) + (version === undefined ? '' : ` version=${version}`),
    keyHeader: options.headerName.toLowerCase(),
    safeMethodsPass: !onMethod,
    deriveWindowMs: windowMs,
  };
}

function deriveWindowOf(derive: unknown, where: string): number {
  const windowMs = (derive as { windowMs?: unknown } | null)?.windowMs;
  if (typeof windowMs !== 'number' || !Number.isInteger(windowMs) || windowMs < 1 || windowMs > MAX_TIMER_MS) {
    throw new Error(
      `@Idempotent() on ${where}: "derive" must be { windowMs } with a whole number of milliseconds from 1 to ${MAX_TIMER_MS}.`,
    );
  }
  return windowMs;
}

/** Responses that bypass Nest's reply cannot be captured, so they could never be replayed. */
function assertReplayable(controller: Type, handler: Handler, where: string): void {
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

/**
 * The route a request was served by, as stored in its record: the path pattern the
 * platform matched (global prefix, `RouterModule` prefixes and URI version included),
 * then the handler's host pattern and version, which tell apart handlers that share a path
 * (header, media-type and custom versioning; host-based routing).
 */
export function servedRoute(route: HttpRoute, request: unknown): string {
  const { route: expressRoute, routeOptions } = request as {
    route?: { path?: unknown };
    routeOptions?: { url?: unknown };
  };
  const matched = typeof expressRoute?.path === 'string' ? expressRoute.path : routeOptions?.url;
  return (typeof matched === 'string' ? matched : route.declaredPattern) + route.qualifier;
}
