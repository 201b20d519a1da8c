import { performance } from 'node:perf_hooks';
import { Logger as NestLogger } from '@nestjs/common';
import {
  describeError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  RequestInProgressError,
} from '../errors.js';
import { openTelemetrySink } from './metrics.js';
import type { RecordIdentity } from '../core/record.js';

/** What happened to one call of an idempotent route or operation. */
export type IdempotencyEventType =
  /** The call won the key: its handler runs. `durationMs`: from the call to the claim (waiting included). */
  | 'claimed'
  /** The handler returned or threw. `durationMs`: how long it ran. */
  | 'executed'
  /** The result (or a stored error) was stored under the key. */
  | 'completed'
  /** The key was released: the handler failed with an error that is not stored, or the result could not be. */
  | 'released'
  /** The call got the stored result instead of running. `durationMs`: from the call to the answer (waiting included). */
  | 'replayed'
  /** Another call holds the key (409 / RequestInProgressError). `durationMs`: how long it waited first. */
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
 * @internal The flow's one-line hook: builds the event only when someone listens, and
 * keeps a listener that throws from breaking the request.
 */
export class IdempotencyEvents {
  private readonly logger = new NestLogger('Idempotency');
  private sinks: EventSink[] = [];

  constructor(listener?: IdempotencyEventListener) {
    if (listener) this.sinks.push({ record: listener });
  }

  /** With `metrics: true`: OpenTelemetry through @opentelemetry/api, if it is installed. */
  async addOpenTelemetry(logger: NestLogger): Promise<void> {
    const sink = await openTelemetrySink();
    if (sink) this.sinks.push(sink);
    else logger.warn('metrics: true, but @opentelemetry/api is not installed: no metrics are recorded.');
  }

  /** Times a decision (claim, wait, replay) and reports its outcome, or the problem it threw. */
  async observeDecision<T extends { kind: 'replay' | 'execute' }>(
    options: { transactional: boolean },
    identity: () => RecordIdentity,
    decide: () => Promise<T>,
  ): Promise<T> {
    if (this.sinks.length === 0) return decide();
    const since = performance.now();
    try {
      const outcome = await decide();
      this.emit(outcome.kind === 'replay' ? 'replayed' : 'claimed', identity(), options, since);
      return outcome;
    } catch (error) {
      const type =
        error instanceof RequestInProgressError
          ? 'conflict'
          : error instanceof IdempotencyKeyReuseError
            ? 'key-reused'
            : error instanceof IdempotencyStoreUnavailableError
              ? 'store-error'
              : undefined;
      if (type) this.emit(type, identity(), options, type === 'conflict' ? since : undefined);
      throw error;
    }
  }

  /** The handler, timed: `executed` when it returns or throws. */
  timed<T>(execution: Observed, handler: () => Promise<T>): () => Promise<T> {
    if (this.sinks.length === 0) return handler;
    return async () => {
      const since = performance.now();
      try {
        return await handler();
      } finally {
        this.emit('executed', execution.identity, execution.options, since);
      }
    };
  }

  /** Reports `type` once `step` has succeeded. */
  async after<T>(type: IdempotencyEventType, execution: Observed, step: Promise<T>): Promise<T> {
    const result = await step;
    this.emit(type, execution.identity, execution.options);
    return result;
  }

  emit(
    type: IdempotencyEventType,
    identity: RecordIdentity,
    options: { transactional: boolean },
    since?: number,
  ): void {
    if (this.sinks.length === 0) return;
    const event: IdempotencyEvent = {
      type,
      scope: identity.scope,
      method: identity.method,
      route: identity.route,
      mode: options.transactional ? 'transactional' : 'lease',
      ...(since === undefined ? {} : { durationMs: performance.now() - since }),
    };
    for (const sink of this.sinks) {
      try {
        sink.record(event);
      } catch (error) {
        this.logger.warn(`an idempotency event listener threw: ${describeError(error)}`);
      }
    }
  }
}
