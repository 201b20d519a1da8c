import { Inject, Injectable, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';
import { IdempotencyService } from '../core/idempotency.service.js';
import { checkIdentityPart } from '../core/run-options.js';
import { MissingMethodKeyError, RequestInProgressError } from '../errors.js';
import { MODULE_OPTIONS_TOKEN } from '../idempotency.module-definition.js';
import type { IdempotencyModuleOptions } from '../idempotency.options.js';
import { assertKeyedTransaction, resolveRouteOptions, validateOptions } from '../options-resolution.js';
import { IdempotencyStore } from '../storage/idempotency.store.js';
import { runAsCall } from './current-call.js';
import type { IdempotentMethodOptions } from './idempotent-method.decorator.js';
import { METHOD_METADATA } from './method-metadata.js';
import { scheduledTickOf, scheduleOf } from './scheduled-tick.js';

/**
 * Which application's service runs a decorated method: the method is called as a plain
 * method (by a scheduler, a queue worker), outside dependency injection, so each instance
 * that has one is bound to its application's service when that application starts. An
 * instance no application created (request-scoped, or made with `new`) is served by the
 * running application, if there is exactly one: with several, records could land in
 * another application's database.
 */
const serviceOf = new WeakMap<object, IdempotencyService>();
const running = new Set<IdempotencyService>();

/**
 * The binding passes of applications being initialised. Nest creates every provider
 * before it runs any module's `onModuleInit`, and some modules start calling methods in
 * theirs: BullModule starts its workers there, and a worker takes the jobs already
 * waiting at once, maybe before IdempotencyModule's turn. Such a call waits for these.
 */
const bindings = new Set<Promise<void>>();

/** Binds the providers with `@IdempotentMethod()` methods to this application's service, and checks them at start-up. */
@Injectable()
export class IdempotentMethods implements OnModuleInit, OnApplicationShutdown {
  private readonly bound: Promise<void>;
  private markBound!: () => void;

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly service: IdempotencyService,
    private readonly store: IdempotencyStore,
    @Inject(MODULE_OPTIONS_TOKEN) private readonly moduleOptions: IdempotencyModuleOptions,
  ) {
    this.bound = new Promise((resolve) => (this.markBound = resolve));
    bindings.add(this.bound);
  }

  onModuleInit(): void {
    running.add(this.service);
    try {
      this.bind();
    } finally {
      // Also when a check fails the boot: nothing may wait for this application then.
      this.bindingDone();
    }
  }

  onApplicationShutdown(): void {
    // An application closed after another module failed its start never bound anything.
    this.bindingDone();
    running.delete(this.service);
  }

  private bindingDone(): void {
    bindings.delete(this.bound);
    this.markBound();
  }

  private bind(): void {
    for (const wrapper of [...this.discovery.getProviders(), ...this.discovery.getControllers()]) {
      const instance = wrapper.instance as object | undefined;
      // The instance's own prototype: also for providers made by a factory or given as a value,
      // whose metatype is the factory (or nothing), not the class with the decorated methods.
      const prototype = instance && typeof instance === 'object' ? (Object.getPrototypeOf(instance) as object) : null;
      if (!instance || !prototype) continue;
      const className = (instance.constructor as { name?: string } | undefined)?.name || String(wrapper.name);
      for (const name of this.scanner.getAllMethodNames(prototype)) {
        const method = (prototype as Record<string, unknown>)[name];
        if (typeof method !== 'function') continue;
        const options = Reflect.getMetadata(METHOD_METADATA, method) as IdempotentMethodOptions | undefined;
        if (!options) continue;
        const where = `${className}.${name}`;
        checkMethod(method, options, where);
        this.checkOptions(options, where);
        serviceOf.set(instance, this.service);
      }
    }
  }

  /** The options a call will run with, checked now rather than on every call. */
  private checkOptions(options: IdempotentMethodOptions, where: string): void {
    const { transactional, waitTimeoutMs, leaseMs, ttlMs, maxResultBytes, name } = options;
    const resolved = resolveRouteOptions(this.moduleOptions, {
      transactional,
      waitTimeoutMs,
      leaseMs,
      ttlMs,
      maxResponseBytes: maxResultBytes,
    });
    validateOptions(resolved, `@IdempotentMethod() on ${where}`);
    // The module-wide default counts: a method may be transactional without saying so.
    assertKeyedTransaction(
      resolved.transactional && options.required === false,
      `@IdempotentMethod() on ${where}`,
      'call',
    );
    if (name !== undefined) checkIdentityPart(name, 'name', `@IdempotentMethod() on ${where}`, false);
    if (resolved.transactional && !this.store.supportsTransactions) {
      throw new Error(
        `@IdempotentMethod() on ${where} is transactional, but ${this.store.constructor.name} has no transactions: ` +
          'transactional methods need the PostgreSQL store.',
      );
    }
  }
}

/** What cannot work fails the boot: a method with no key source, an unknown concurrency mode. */
function checkMethod(method: object, options: IdempotentMethodOptions, where: string): void {
  const schedule = scheduleOf(method);
  if (!options.key && (schedule === undefined || schedule === 'timeout')) {
    throw new Error(
      `@IdempotentMethod() on ${where}: give it a "key" (e.g. key: (job) => job.id); only @Cron and @Interval ` +
        'tasks have one of their own (their tick).',
    );
  }
  if (options.key !== undefined && typeof options.key !== 'function') {
    throw new Error(`@IdempotentMethod() on ${where}: "key" must be a function of the method's arguments.`);
  }
  const { concurrency } = options;
  if (concurrency !== undefined && !['wait', 'reject', 'skip'].includes(concurrency)) {
    throw new Error(`@IdempotentMethod() on ${where}: "concurrency" must be 'wait', 'reject' or 'skip'.`);
  }
}

/**
 * The function that carries the method's schedule: the wrapper itself, or, when another
 * decorator wraps it between `@Cron()` and `@IdempotentMethod()` (a tracing `@Span()`),
 * the outer function that `@Cron()` decorated and the scheduler registered.
 */
function scheduledFunction(instance: object, wrapped: object, method: string | symbol): object {
  if (scheduleOf(wrapped) !== undefined || !instance) return wrapped;
  const registered: unknown = Reflect.get(instance, method);
  return typeof registered === 'function' && scheduleOf(registered) !== undefined ? registered : wrapped;
}

/** @internal The body of every `@IdempotentMethod()` wrapper. */
export async function invokeIdempotent(
  instance: object,
  wrapped: object,
  original: (...args: unknown[]) => unknown,
  args: unknown[],
  { options, method, where }: { options: IdempotentMethodOptions; method: string | symbol; where: string },
): Promise<unknown> {
  let service = instance ? serviceOf.get(instance) : undefined;
  if (!service && bindings.size > 0) {
    await Promise.all(bindings);
    service = instance ? serviceOf.get(instance) : undefined;
  }
  service ??= running.size === 1 ? [...running][0] : undefined;
  if (!service) {
    throw new Error(
      running.size === 0
        ? `${where} is an @IdempotentMethod(), but no application with IdempotencyModule has started: ` +
            'it cannot run before the application is initialised.'
        : `${where} is an @IdempotentMethod() of an instance no application created (request-scoped, or made ` +
            `with new), and ${running.size} applications are running: which one's store would keep its record ` +
            'cannot be told. Let the application create the instance.',
    );
  }
  await service.ready();
  const scheduled = scheduledFunction(instance, wrapped, method);
  const schedule = scheduleOf(scheduled);
  const tick = options.key ? undefined : await scheduledTickOf(scheduled, Date.now());
  const key = options.key ? await options.key(...args) : tick && new Date(tick.at).toISOString();
  if (key === undefined || key === null || key === '') {
    if (options.required === false) return original.apply(instance, args);
    throw new MissingMethodKeyError(where);
  }
  const concurrency = options.concurrency ?? (schedule ? 'skip' : undefined);
  let ran = false;
  // A scheduled task's own name is unique only within its application; Class.method keeps
  // two applications that share a database from sharing a task's ticks.
  const name = options.name ?? where;
  const scope = options.scope ? await options.scope(...args) : '';
  const call = { name, key, scope, ...(tick && { tick: new Date(tick.at) }) };
  try {
    return await service.run(
      {
        key,
        name,
        scope,
        payload: options.payload?.(...args),
        transactional: options.transactional,
        concurrency: concurrency === 'skip' ? 'reject' : concurrency,
        waitTimeoutMs: options.waitTimeoutMs,
        leaseMs: options.leaseMs,
        ttlMs: options.ttlMs,
        maxResultBytes: options.maxResultBytes,
      },
      () => {
        ran = true;
        return runAsCall(call, () => original.apply(instance, args));
      },
    );
  } catch (error) {
    // Another call (on this or another instance) is running it: this one is the duplicate.
    // Not so when the method itself ran and threw it (an idempotent call of its own met a
    // busy key): its key is released, and the caller must see the failure.
    if (concurrency === 'skip' && !ran && error instanceof RequestInProgressError) return undefined;
    throw error;
  }
}
