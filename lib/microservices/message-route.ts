import type { IdempotentRouteOptions, ResolvedRouteOptions, ScopeResolver } from '../idempotency.options.js';
import { assertKeyedTransaction, MAX_TIMER_MS } from '../options-resolution.js';
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
  resolved: ResolvedRouteOptions,
  moduleOptions: IdempotentRouteOptions,
  where: string,
): MessageRoute {
  const { onClass, onMethod } = decorators;
  const options = { ...resolved, ...messageDefaults(resolved, [moduleOptions, onClass, onMethod]) };
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
  assertKeyedTransaction(options.transactional && !options.required, `@Idempotent() on ${where}`, 'message');
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

/** Time a duplicate waits beyond the lease, so that a redelivery after its owner crashed takes over. */
const TAKE_OVER_MARGIN_MS = 10_000;

/**
 * Where no level sets them, message handlers wait for a duplicate's first delivery rather
 * than reject it, and wait longer than the lease. A broker redelivers a message whose
 * consumer crashed while that consumer's lease still runs: a rejection would leave the
 * message to the transport's error path (RabbitMQ does not requeue a failed event), and a
 * wait shorter than the lease would end in one too.
 */
function messageDefaults(
  resolved: ResolvedRouteOptions,
  levels: Array<IdempotentRouteOptions | undefined>,
): Partial<ResolvedRouteOptions> {
  const set = (name: 'concurrency' | 'waitTimeoutMs') => levels.some((level) => level?.[name] !== undefined);
  return {
    ...(!set('concurrency') && { concurrency: 'wait' as const }),
    ...(!set('waitTimeoutMs') && { waitTimeoutMs: Math.min(MAX_TIMER_MS, resolved.leaseMs + TAKE_OVER_MARGIN_MS) }),
  };
}
