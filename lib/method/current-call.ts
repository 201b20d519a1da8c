import { AsyncLocalStorage } from 'node:async_hooks';

/** What a running `@IdempotentMethod()` call was claimed as. */
export interface IdempotentCall {
  /** The operation's name: the scheduled task's name, or `ClassName.methodName`, or the `name` option. */
  readonly name: string;
  /** The key the call claimed. */
  readonly key: string;
  /** The scope the key belongs to ('' without one). */
  readonly scope: string;
  /** Scheduled tasks (`@Cron`, `@Interval`) without a `key` option: the scheduled time of the tick this call runs. */
  readonly tick?: Date;
}

const current = new AsyncLocalStorage<IdempotentCall>();

/** @internal Runs a claimed call's method with its identity in context. */
export function runAsCall<T>(call: IdempotentCall, run: () => T): T {
  return current.run(call, run);
}

/**
 * The identity of the `@IdempotentMethod()` call whose method is running, for the method
 * and what it calls; undefined elsewhere. A scheduled task needs it to key its own work by
 * the tick it was claimed for (a job id, a report period): reading the clock again in the
 * method can land in the next tick.
 *
 * ```ts
 * @IdempotentMethod()
 * @Interval('settlement', 60_000)
 * async settle() {
 *   const { tick } = currentIdempotentCall()!;
 *   await this.queue.add('settle', {}, { jobId: `settlement-${tick!.getTime()}` });
 * }
 * ```
 */
export function currentIdempotentCall(): IdempotentCall | undefined {
  return current.getStore();
}
