import { performance } from 'node:perf_hooks';
import { Logger as NestLogger } from '@nestjs/common';
import {
  describeError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  RequestInProgressError,
} from '../errors.js';
import { openTelemetrySink } from './metrics.js';
import type { Outcome } from '../core/execution.js';
import type { Waiting } from '../core/flow.js';
import type { RecordIdentity } from '../core/record.js';

/** What happened to one call of an idempotent route or operation. */
export type IdempotencyEventType =
  /** The call won the key: its handler runs. `durationMs`: from the call to the claim (waiting included). */
  | 'claimed'
  /**
   * The claim that just won the key (right after its `claimed`) took it over from an owner
   * whose lease had lapsed: that owner crashed or stalled, and the handler runs again for
   * the same request, after a run that may have done part of its work. Never for a new key,
   * nor for a key whose record had expired.
   */
  | 'lease-taken-over'
  /** The handler returned or threw. `durationMs`: how long it ran. */
  | 'executed'
  /** The result (or a stored error) was stored under the key. */
  | 'completed'
  /** The key was released: the handler failed with an error that is not stored, or the result could not be. */
  | 'released'
  /**
   * A `concurrency: 'wait'` call found its key held by another call in progress and waited
   * for it; once per call, when the wait ends, just before what ended it: `replayed` (the
   * other call completed), `conflict` (`waitTimeoutMs` ran out) or `claimed` (the other call
   * released the key), or a `key-reused` or `store-error` found after the wait.
   * `durationMs`: from the moment it found the key held to that end. Not emitted for calls
   * that found the key free or completed, nor for `'reject'` calls; in transactional mode,
   * not for a wait inside PostgreSQL that ends with the other call rolling back (the call
   * then simply claims).
   */
  | 'waited'
  /** The call got the stored result instead of running. `durationMs`: from the call to the answer (waiting included). */
  | 'replayed'
  /** Another call holds the key (409 / RequestInProgressError). `durationMs`: from the call to the answer (waiting included). */
  | 'conflict'
  /** The key was used with another payload (422 / IdempotencyKeyReuseError). */
  | 'key-reused'
  /** The store could not be reached or failed (503 / IdempotencyStoreUnavailableError). */
  | 'store-error';

/**
 * One outcome, as the `onEvent` listener and the metrics get it. It carries where it
 * happened, never what: no key, no body, no header.
 */
export interface IdempotencyEvent {
  readonly type: IdempotencyEventType;
  /** The caller's scope as stored (long ones as their SHA-256); '' when unscoped. */
  readonly scope: string;
  /** The HTTP method; `call` for `run()` and `@IdempotentMethod()`; `message` / `event` for message handlers. */
  readonly method: string;
  /** The route pattern (`/payments/:id`), the operation's name, or the message pattern. */
  readonly route: string;
  readonly mode: 'lease' | 'transactional';
  /** See each type. */
  readonly durationMs?: number;
}

/** The module's `onEvent` option. Called synchronously on the request's path: keep it cheap, and never throw. */
export type IdempotencyEventListener = (event: IdempotencyEvent) => void;

/** What the flow reports on: a won claim's identity (scope as stored) and options. */
interface Observed {
  readonly identity: RecordIdentity;
  readonly options: { transactional: boolean };
}

/** What the metrics recorder is given (see metrics.ts). */
export interface EventSink {
  record(event: IdempotencyEvent): void;
}

/**
 * @internal The flow's hook. Without a listener (`listening` false) the flow skips it
 * altogether: no timing, no wrapped promise, no event. A listener that throws never breaks
 * the request.
 */
export class IdempotencyEvents {
  private readonly logger = new NestLogger('Idempotency');
  private readonly sinks: EventSink[] = [];
  /** Whether any sink is registered; read on every call of the flow, so a field, not a getter. */
  listening = false;

  constructor(listener?: IdempotencyEventListener) {
    if (listener) this.add({ record: listener });
  }

  /** With `metrics: true`: OpenTelemetry through @opentelemetry/api, if it is installed. */
  async addOpenTelemetry(logger: NestLogger): Promise<void> {
    const sink = await openTelemetrySink();
    if (sink) this.add(sink);
    else logger.warn('metrics: true, but @opentelemetry/api is not installed: no metrics are recorded.');
  }

  /**
   * Times a decision (claim, wait, replay) and reports its outcome, or the problem it threw,
   * preceded by `waited` when the call waited for another (see `Waiting`). Only when listening.
   */
  async observeDecision(
    options: { transactional: boolean },
    identity: RecordIdentity,
    waiting: Waiting,
    decide: () => Promise<Outcome>,
  ): Promise<Outcome> {
    const since = performance.now();
    try {
      const outcome = await decide();
      this.reportWait(identity, options, waiting);
      if (outcome.kind === 'replay') {
        this.emit('replayed', identity, options, since);
      } else {
        this.emit('claimed', identity, options, since);
        if (outcome.execution.takenOver) this.emit('lease-taken-over', identity, options);
      }
      return outcome;
    } catch (error) {
      this.reportWait(identity, options, waiting);
      const type =
        error instanceof RequestInProgressError
          ? 'conflict'
          : error instanceof IdempotencyKeyReuseError
            ? 'key-reused'
            : error instanceof IdempotencyStoreUnavailableError
              ? 'store-error'
              : undefined;
      if (type) this.emit(type, identity, options, type === 'conflict' ? since : undefined);
      throw error;
    }
  }

  /** The handler, timed: `executed` when it returns or throws. */
  timed<T>(execution: Observed, handler: () => Promise<T>): () => Promise<T> {
    if (!this.listening) return handler;
    return async () => {
      const since = performance.now();
      try {
        return await handler();
      } finally {
        this.emit('executed', execution.identity, execution.options, since);
      }
    };
  }

  /** Reports `type` once `step` has succeeded; `step` itself when nothing listens. */
  after<T>(type: IdempotencyEventType, execution: Observed, step: Promise<T>): Promise<T> {
    if (!this.listening) return step;
    return step.then((result) => {
      this.emit(type, execution.identity, execution.options);
      return result;
    });
  }

  emit(
    type: IdempotencyEventType,
    identity: RecordIdentity,
    options: { transactional: boolean },
    since?: number,
  ): void {
    if (!this.listening) return;
    const mode = options.transactional ? 'transactional' : 'lease';
    const { scope, method, route } = identity;
    // One of two fixed shapes, built once for every sink.
    const event: IdempotencyEvent =
      since === undefined
        ? { type, scope, method, route, mode }
        : { type, scope, method, route, mode, durationMs: performance.now() - since };
    for (const sink of this.sinks) {
      try {
        sink.record(event);
      } catch (error) {
        this.logger.warn(`an idempotency event listener threw: ${describeError(error)}`);
      }
    }
  }

  private reportWait(identity: RecordIdentity, options: { transactional: boolean }, waiting: Waiting): void {
    if (waiting.since !== undefined) this.emit('waited', identity, options, waiting.since);
  }

  private add(sink: EventSink): void {
    this.sinks.push(sink);
    this.listening = true;
  }
}
