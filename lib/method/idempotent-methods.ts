import { Injectable, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner } from '@nestjs/core';
import { IdempotencyService } from '../core/idempotency.service.js';
import { MissingMethodKeyError, RequestInProgressError } from '../errors.js';
import { runAsCall } from './current-call.js';
import type { IdempotentMethodOptions } from './idempotent-method.decorator.js';
import { scheduledTickOf, scheduleOf } from './scheduled-tick.js';

/** Metadata key of `@IdempotentMethod()` (repeated here so that this file does not import the decorator's). */
const METHOD_METADATA = 'nestjs-idempotency:method-options';

/**
 * Which application's service runs a decorated method: the method is called as a plain
 * method (by a scheduler, a queue worker), outside dependency injection, so each instance
 * that has one is bound to its application's service when that application starts; the
 * last application started serves instances it did not create (request-scoped providers).
 */
const serviceOf = new WeakMap<object, IdempotencyService>();
let latestService: IdempotencyService | undefined;

/** Binds the providers with `@IdempotentMethod()` methods to this application's service, and checks them at start-up. */
@Injectable()
export class IdempotentMethods implements OnModuleInit, OnApplicationShutdown {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly service: IdempotencyService,
  ) {}

  onModuleInit(): void {
    latestService = this.service;
    for (const wrapper of [...this.discovery.getProviders(), ...this.discovery.getControllers()]) {
      const instance = wrapper.instance as object | undefined;
      const prototype = (wrapper.metatype as { prototype?: object } | undefined)?.prototype;
      if (!instance || typeof instance !== 'object' || !prototype) continue;
      for (const name of this.scanner.getAllMethodNames(prototype)) {
        const method = (prototype as Record<string, unknown>)[name];
        if (typeof method !== 'function') continue;
        const options = Reflect.getMetadata(METHOD_METADATA, method) as IdempotentMethodOptions | undefined;
        if (!options) continue;
        checkMethod(method, options, `${(wrapper.metatype as { name: string }).name}.${name}`);
        serviceOf.set(instance, this.service);
      }
    }
  }

  onApplicationShutdown(): void {
    if (latestService === this.service) latestService = undefined;
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
  if (options.transactional && options.required === false) {
    throw new Error(
      `@IdempotentMethod() on ${where} is transactional with required: false: a call without a key would run ` +
        'without the transaction the method expects. Make the key required.',
    );
  }
}

/** @internal The body of every `@IdempotentMethod()` wrapper. */
export async function invokeIdempotent(
  instance: object,
  wrapped: object,
  original: (...args: unknown[]) => unknown,
  args: unknown[],
  { options, where }: { options: IdempotentMethodOptions; where: string },
): Promise<unknown> {
  const service = (instance && serviceOf.get(instance)) ?? latestService;
  if (!service) {
    throw new Error(
      `${where} is an @IdempotentMethod(), but no application with IdempotencyModule has started: ` +
        'it cannot run before the application is initialised.',
    );
  }
  await service.ready();
  const schedule = scheduleOf(wrapped);
  const tick = options.key ? undefined : await scheduledTickOf(wrapped, Date.now());
  const key = options.key ? await options.key(...args) : tick && new Date(tick.at).toISOString();
  if (key === undefined || key === null || key === '') {
    if (options.required === false) return original.apply(instance, args);
    throw new MissingMethodKeyError(where);
  }
  const concurrency = options.concurrency ?? (schedule ? 'skip' : undefined);
  const name = options.name ?? tick?.name ?? where;
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
      () => runAsCall(call, () => original.apply(instance, args)),
    );
  } catch (error) {
    // Another call (on this or another instance) is running it: this one is the duplicate.
    if (concurrency === 'skip' && error instanceof RequestInProgressError) return undefined;
    throw error;
  }
}
