import type { IdempotentRouteOptions, ResolvedRouteOptions, ScopeResolver } from '../idempotency.options.js';
import { type Handler, isEventHandler, messagePatternsOf } from '../route-metadata.js';

/** Everything the message interceptor needs about one idempotent message or event handler, computed once. */
export interface MessageRoute {
  readonly context: 'rpc';
  readonly options: ResolvedRouteOptions;
  /** The handler's patterns as text: the record's route, so that keys of different streams never collide. */
  readonly pattern: string;
  /** Events get no reply: a duplicate is only acknowledged. */
  readonly kind: 'message' | 'event';
  readonly key?: IdempotentRouteOptions['key'];
  readonly acknowledge?: IdempotentRouteOptions['acknowledge'];
  /** A scope given on the decorators; without one, keys are unique per pattern. */
  readonly scope?: ScopeResolver;
}

/** The message route of a decorated `@MessagePattern` / `@EventPattern` handler; throws for what cannot work. */
export function messageRouteOf(
  handler: Handler,
  decorators: { onClass?: IdempotentRouteOptions; onMethod?: IdempotentRouteOptions },
  options: ResolvedRouteOptions,
  where: string,
): MessageRoute {
  const { onClass, onMethod } = decorators;
  const pick = <K extends 'key' | 'acknowledge' | 'scope' | 'derive'>(name: K) => onMethod?.[name] ?? onClass?.[name];
  if (pick('derive') !== undefined) {
    throw new Error(`@Idempotent() on ${where}: "derive" is for HTTP routes; a message's key is its id or "key".`);
  }
  for (const name of ['key', 'acknowledge', 'scope'] as const) {
    const value = pick(name);
    if (value !== undefined && typeof value !== 'function') {
      throw new Error(`@Idempotent() on ${where}: "${name}" must be a function.`);
    }
  }
  if (options.transactional && !options.required) {
    throw new Error(
      `@Idempotent() on ${where} is transactional with required: false: a message without a key ` +
        'would run without the transaction its handler expects. Make the key required.',
    );
  }
  return {
    context: 'rpc',
    options,
    pattern: messagePatternsOf(handler),
    kind: isEventHandler(handler) ? 'event' : 'message',
    key: pick('key'),
    acknowledge: pick('acknowledge'),
    scope: pick('scope'),
  };
}
