import type { ConcurrencyMode, IdempotentRouteOptions } from '../idempotency.options.js';
import { invokeIdempotent } from './idempotent-methods.js';
import { METHOD_METADATA } from './method-metadata.js';

/** Options of `@IdempotentMethod()`; the functions get the method's arguments. */
export interface IdempotentMethodOptions extends Pick<
  IdempotentRouteOptions,
  'transactional' | 'waitTimeoutMs' | 'leaseMs' | 'ttlMs'
> {
  /**
   * The call's key, from the method's arguments: a job's id, an event's id. Return
   * undefined when the call has none (see `required`).
   * @default scheduled tasks (`@Cron`, `@Interval`): the task's name and its tick's scheduled time; other methods: none (set one)
   */
  key?: (...args: any[]) => string | undefined | Promise<string | undefined>;
  /**
   * Whether a call without a key throws (`MissingMethodKeyError`) or runs without
   * idempotency.
   * @default true
   */
  required?: boolean;
  /**
   * The operation's name: the same key under another name is another operation.
   * @default `ClassName.methodName` (of the class the method is called on)
   */
  name?: string;
  /**
   * Whose key space the key belongs to (a tenant): keys are unique per scope.
   * @default '' (one key space per name)
   */
  scope?: (...args: any[]) => string | Promise<string>;
  /**
   * What must be the same for a repeat to get the stored result, from the arguments
   * (e.g. `(job) => job.data`); a repeat with another payload throws
   * `IdempotencyKeyReuseError`.
   * @default nothing (the key alone decides)
   */
  payload?: (...args: any[]) => unknown;
  /**
   * What a call gets while another call (in any process) holds the key: `'wait'` for its
   * result, `'reject'` (throws `RequestInProgressError`), or `'skip'` (returns
   * undefined without running).
   * @default 'skip' for scheduled tasks (each tick runs on one instance, the others skip it); the module's `concurrency` otherwise
   */
  concurrency?: ConcurrencyMode | 'skip';
  /**
   * Largest result stored, in bytes of its JSON; a larger one is returned once, and
   * repeats get `ResponseNotReplayableError`.
   * @default the module's `maxResponseBytes`
   */
  maxResultBytes?: number;
}

/**
 * Makes a provider method run once per key: a job processor (the job's id), a scheduled
 * task (one run per tick across instances), any method whose calls may repeat. The first
 * call runs the method and stores its result; repeats, sequential or parallel, in any
 * process, get the stored result (as JSON makes it) without running it. A call that
 * throws stores nothing, so a retry runs again.
 *
 * It wraps the method itself, the way `@Transactional()` of `@nestjs-cls/transactional`
 * does: the method stays a plain method that schedulers and queue workers call directly.
 * Metadata the method carries (`@Cron()`, `@OnEvent()`) is kept on the wrapper. The method
 * must be `async` (return a promise), since finding out whether it runs is.
 */
export function IdempotentMethod(
  options: IdempotentMethodOptions = {},
): <T extends (...args: any[]) => Promise<unknown>>(
  target: object,
  propertyKey: string | symbol,
  descriptor: TypedPropertyDescriptor<T>,
) => TypedPropertyDescriptor<T> {
  // Only methods that return a promise: the wrapped one does, whatever the original returned.
  return (target, propertyKey, descriptor) => {
    const original = descriptor.value as unknown;
    if (typeof original !== 'function') {
      throw new TypeError(`@IdempotentMethod() on ${String(propertyKey)}: it can only decorate a method.`);
    }
    const owner = (typeof target === 'function' ? target : target.constructor) as { name: string };
    const method = String(propertyKey);
    const wrapped = function (this: object, ...args: unknown[]): Promise<unknown> {
      // Named after the instance's class, not the one declaring the method: two workers that
      // inherit it from one base class are two operations, and their keys (job ids counted
      // per queue) would otherwise collide, one answering the other's job without running.
      return invokeIdempotent(this, wrapped, original as (...args: unknown[]) => unknown, args, {
        options,
        method: propertyKey,
        where: `${classNameOf(this) ?? owner.name}.${method}`,
      });
    };
    for (const key of Reflect.getMetadataKeys(original)) {
      Reflect.defineMetadata(key, Reflect.getMetadata(key, original), wrapped);
    }
    Reflect.defineMetadata(METHOD_METADATA, options, wrapped);
    Object.defineProperty(wrapped, 'name', { value: (original as { name: string }).name });
    descriptor.value = wrapped as unknown as typeof descriptor.value;
    return descriptor;
  };
}

/** The name of the class a method was called on (the class itself for a static method). */
function classNameOf(instance: unknown): string | undefined {
  if (typeof instance === 'function') return (instance as { name?: string }).name || undefined;
  if (typeof instance !== 'object' || instance === null) return undefined;
  return (instance.constructor as { name?: string } | undefined)?.name || undefined;
}
