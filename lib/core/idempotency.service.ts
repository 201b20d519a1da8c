import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { createHash } from 'node:crypto';
import type { PoolClient } from 'pg';
import type { EntityManager } from 'typeorm';
import { describeError } from '../errors.js';
import { MODULE_OPTIONS_TOKEN } from '../idempotency.module-definition.js';
import { type IdempotencyModuleOptions, type ResolvedRouteOptions } from '../idempotency.options.js';
import { validateModuleOptions } from '../options-resolution.js';
import { IdempotencyStore, type PurgeOptions } from '../storage/idempotency.store.js';
import type { Execution, Outcome } from './execution.js';
import { Fingerprinter, type FingerprintParts } from './fingerprint.js';
import { type Attempt, type ExecutionMode, Flow, where } from './flow.js';
import { currentClient, currentManager, NO_ENTITY_MANAGER } from './idempotent-transaction.js';
import { KeyQueue } from './key-queue.js';
import { LeaseMode } from './lease.mode.js';
import { IdempotencyEvents } from '../observability/events.js';
import { auditLine } from '../operator/audit.js';
import type { IdempotencyRecord, RecordIdentity, RecordStatus, StoredResponse } from './record.js';
import { ResponseCipher } from './response-cipher.js';
import { type IdempotentRunOptions, operationOf } from './run-options.js';
import { resultOf, storedResult, unreplayable } from './stored-response.js';
import { TransactionalMode } from './transactional.mode.js';

/** The first argument of a transactional run() on a store without TypeORM: any use of it says why. */
const withoutEntityManager = new Proxy({} as EntityManager, {
  get(_target, property) {
    // Awaiting or logging it probes these; they must not throw.
    if (property === 'then' || typeof property === 'symbol') return undefined;
    throw new Error(NO_ENTITY_MANAGER);
  },
});

/** Scopes longer than this are stored as their SHA-256, so that they fit the primary key's index entry. */
const MAX_STORED_SCOPE_BYTES = 256;
const HASHED_SCOPE = 'sha256:';

/**
 * The idempotency flow, free of any context: claim, wait, replay, complete, release; plus
 * purge and look-up. Each context (HTTP, messages, provider methods) maps its calls onto
 * it, and `run()` offers it to any code.
 */
@Injectable()
export class IdempotencyService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('Idempotency');
  private readonly queue = new KeyQueue();
  private readonly cipher: ResponseCipher;
  private readonly flow: Flow;
  private readonly lease: LeaseMode;
  private readonly transactional: TransactionalMode;
  private readonly events: IdempotencyEvents;
  private fingerprinter?: Fingerprinter;
  private purgeTimer?: NodeJS.Timeout;
  private purging = false;
  /** Reading the secret (and checking the tables), once: at init, or at the first call before it. */
  private starting?: Promise<void>;

  constructor(
    private readonly store: IdempotencyStore,
    @Inject(MODULE_OPTIONS_TOKEN) private readonly moduleOptions: IdempotencyModuleOptions,
  ) {
    validateModuleOptions(moduleOptions);
    this.cipher = new ResponseCipher(moduleOptions.encryptionKeys);
    this.flow = new Flow(store, this.cipher, this.logger, moduleOptions.retryAfterSeconds ?? 1);
    this.lease = new LeaseMode(this.flow);
    this.transactional = new TransactionalMode(this.flow);
    this.events = new IdempotencyEvents(moduleOptions.onEvent);
  }

  async onModuleInit(): Promise<void> {
    await this.ready();
    const interval = this.moduleOptions.purgeIntervalMs;
    if (interval) {
      this.purgeTimer = setInterval(() => void this.purgeInBackground(), interval);
      this.purgeTimer.unref();
    }
  }

  /**
   * @internal Resolves once the service can serve calls (its secret is read). A call that
   * comes before the application has initialised this module (the `onModuleInit` of a
   * provider that Nest initialises first, a module compiled but not initialised) starts it
   * here, rather than failing or waiting for an initialisation that waits for the call.
   */
  ready(): Promise<void> {
    this.starting ??= this.start().catch((error: unknown) => {
      this.starting = undefined;
      throw error;
    });
    return this.starting;
  }

  private async start(): Promise<void> {
    await this.store.verify();
    const given = this.moduleOptions.fingerprintSecret;
    const [current, ...previous] = given === undefined ? [await this.store.sharedSecret()] : [given].flat();
    this.fingerprinter = new Fingerprinter(current, previous);
    if (this.moduleOptions.metrics) await this.events.addOpenTelemetry(this.logger);
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.purgeTimer);
    await this.lease.shutdown();
  }

  /**
   * Runs `operation` once per key: the first call runs it and stores its result; every
   * repeat (sequential or parallel, in any process) gets the stored result instead. Every
   * call, the first included, gets the result as JSON makes it (a Date as its ISO
   * string), so that the first call and a retry see the same value. An operation that
   * throws stores nothing: the key is free again, and the next call runs it.
   *
   * With `transactional: true`, `operation` gets the EntityManager of a transaction that
   * also holds the claim, and that transaction's connection as a node-postgres client (see
   * `IdempotentTransaction.client`): write through either, and the writes commit together
   * with the stored result, or not at all. On a store that runs on a `pg` Pool there is no
   * EntityManager: using the first argument throws; write through the client.
   *
   * Throws `RequestInProgressError` when another call holds the key (`concurrency:
   * 'reject'`, or `'wait'` past `waitTimeoutMs`), `IdempotencyKeyReuseError` when the key
   * was used with another `payload`, and `IdempotencyStoreUnavailableError`.
   */
  run<T>(
    options: IdempotentRunOptions & { transactional: true },
    operation: (manager: EntityManager, client: PoolClient) => T | Promise<T>,
  ): Promise<Awaited<T>>;
  run<T>(options: IdempotentRunOptions, operation: () => T | Promise<T>): Promise<Awaited<T>>;
  async run<T>(
    options: IdempotentRunOptions,
    operation: (manager: EntityManager, client: PoolClient) => T | Promise<T>,
  ): Promise<Awaited<T>> {
    const { identity, routeOptions, payload } = operationOf(this.moduleOptions, options);
    if (routeOptions.transactional && !this.store.supportsTransactions) {
      // A configuration error, not an outage: never answered as one (store-unavailable, retry later).
      throw new Error(
        `IdempotencyService.run(${JSON.stringify(identity.route)}) is transactional, but ` +
          `${this.store.constructor.name} has no transactions: transactional operations need the PostgreSQL store.`,
      );
    }
    const outcome = await this.begin(routeOptions, identity, { body: payload });
    if (outcome.kind === 'replay') return resultOf(outcome.response) as Awaited<T>;
    // Read inside the handler's context, where transactional mode put its transaction. Lease
    // mode hands none: an ambient one would be an enclosing request's transaction.
    const managed = async () =>
      routeOptions.transactional
        ? operation(currentManager() ?? withoutEntityManager, currentClient()!)
        : (operation as () => T | Promise<T>)();
    return (await this.execute(outcome.execution, managed, { returnUnstorable: true })) as Awaited<T>;
  }

  /**
   * @internal A key for a request that sent none: its fingerprint under the current
   * secret, so that only the same request (body, parameters, query) maps to it.
   */
  derivedKey(parts: FingerprintParts): string {
    return `derived:${this.fingerprinter!.of(parts)[0]}`;
  }

  /**
   * @internal Decides what a call gets: claims the record, waits for it (`concurrency:
   * 'wait'`), or finds it completed. Throws 409, 422 or 503 problems.
   */
  begin(options: ResolvedRouteOptions, identity: RecordIdentity, parts: FingerprintParts): Promise<Outcome> {
    return this.events.observeDecision(
      options,
      () => storedIdentity(identity),
      () => this.decide(options, identity, parts),
    );
  }

  private async decide(
    options: ResolvedRouteOptions,
    identity: RecordIdentity,
    parts: FingerprintParts,
  ): Promise<Outcome> {
    if (!this.fingerprinter) await this.ready();
    identity = { ...identity, scope: storedScope(identity.scope) };
    const fingerprints = this.fingerprinter!.of(parts);
    const now = Date.now();
    const waiting = options.concurrency === 'wait';
    const waitUntil = now + (waiting ? options.waitTimeoutMs : 0);
    const acquireBy = now + options.waitTimeoutMs;
    const attempt: Attempt = { identity, fingerprints, options, waitUntil, acquireBy, leave: () => {} };
    const mode = this.modeOf(options);
    const queueKey = waiting ? JSON.stringify(identity) : '';
    // Replays (and 422s) first, before the per-key queue: a completed record needs no turn,
    // so replays of one hot key never wait for one another. Where the claim is that same
    // read, a first execution skips it, unless a request for the key is already queued here.
    if (!mode.claimAnswersReplays || (waiting && this.queue.busy(queueKey))) {
      const answered = await this.answerFromCompleted(attempt);
      if (answered) return answered;
    }
    if (!waiting) return mode.begin(attempt);
    const { leave, waited } = await this.queue.enter(queueKey, waitUntil, options.retryAfterSeconds);
    attempt.leave = leave;
    try {
      // Behind another request for this key, which has most likely completed it meanwhile.
      const reread = waited && !mode.claimAnswersReplays;
      const outcome = (reread ? await this.answerFromCompleted(attempt) : undefined) ?? (await mode.begin(attempt));
      if (outcome.kind !== 'execute') leave();
      return outcome;
    } catch (error) {
      leave();
      throw error;
    }
  }

  /**
   * @internal Runs a won claim's handler whose result is a value (not an HTTP response),
   * and stores the result, or releases the key when the handler throws. Returns the result
   * as stored, as every repeat will get it: a caller that works with a Date on the first
   * call and a string on a retry would fail only on the path least often tested. A result
   * too large to store is returned as it is (repeats get `ResponseNotReplayableError`).
   *
   * A result JSON cannot hold (a BigInt, a cycle) is the outcome of an operation that has
   * run: with `returnUnstorable` (`run()`, whose caller takes the value as it is) it is
   * returned, and the record completed as not replayable, as for a result over the size
   * limit (in transactional mode the writes commit with it). Otherwise (a reply a transport
   * would serialise as JSON, and fail to) the error is thrown, and the record abandoned.
   */
  async execute(
    execution: Execution,
    handler: () => Promise<unknown>,
    { returnUnstorable = false }: { returnUnstorable?: boolean } = {},
  ): Promise<unknown> {
    let result: unknown;
    try {
      result = await this.runHandler(execution, handler);
    } catch (error) {
      throw await this.fail(execution, error, () => undefined);
    }
    let stored: StoredResponse;
    try {
      stored = storedResult(result, execution.options.maxResponseBytes);
    } catch (error) {
      const reason = `the result could not be serialised (${describeError(error)})`;
      if (!returnUnstorable) {
        await this.abandon(execution, 200, reason);
        throw error;
      }
      this.logger.warn(`${where(execution)}: ${reason}; repeats get ResponseNotReplayableError.`);
      stored = unreplayable(200, reason);
    }
    const answer = (await this.complete(execution, stored)) ?? stored;
    return answer.kind === 'unreplayable' ? result : resultOf(answer);
  }

  /** @internal Runs the handler of a won claim, in its transaction in transactional mode. */
  runHandler<T>(execution: Execution, handler: () => Promise<T>): Promise<T> {
    return this.modeOf(execution.options).runHandler(execution, this.events.timed(execution, handler));
  }

  /**
   * @internal Stores the result of a finished execution. Returns a stored result to answer
   * with instead of the handler's, in the one case where the handler's may not be the
   * truth (see `TransactionalMode.complete`).
   */
  complete(execution: Execution, response: StoredResponse): Promise<StoredResponse | undefined> {
    return this.events.after('completed', execution, this.modeOf(execution.options).complete(execution, response));
  }

  /**
   * @internal The handler failed with `error`. Stores what `capture` makes of it (a final
   * answer, e.g. a 4xx), or releases the key so that a retry runs again. Returns the error
   * to throw: the handler's own, or 503 when the transaction's connection broke under it.
   */
  async fail(execution: Execution, error: unknown, capture: () => StoredResponse | undefined): Promise<unknown> {
    const mode = this.modeOf(execution.options);
    if (mode.lostConnection(execution, error)) {
      await this.events.after('released', execution, mode.release(execution));
      return this.flow.unavailable(error);
    }
    let stored: StoredResponse | undefined;
    try {
      stored = capture();
    } catch (policyError) {
      // The error policy (or the capture) threw: the handler's error is still the answer, and nothing is stored.
      this.logger.error(
        `${where(execution)}: deciding whether to store the handler's error failed: ${describeError(policyError)}`,
      );
    }
    if (!stored) {
      await this.events.after('released', execution, mode.release(execution));
      return error;
    }
    return this.events.after('completed', execution, mode.completeWithError(execution, stored, error));
  }

  /** @internal A result that cannot be stored: completed as not replayable, or released where its effect is undone. */
  abandon(execution: Execution, status: number, reason: string): Promise<void> {
    return this.modeOf(execution.options).abandon(execution, status, reason);
  }

  /** @internal Frees the key of a failed execution so that a retry runs the handler again. */
  release(execution: Execution): Promise<void> {
    return this.events.after('released', execution, this.modeOf(execution.options).release(execution));
  }

  /** The live record of an identity (null when absent or expired), e.g. for support tooling. */
  async find(identity: RecordIdentity): Promise<IdempotencyRecord | null> {
    const scoped = { ...identity, scope: storedScope(identity.scope) };
    const record = await this.store.find(scoped);
    return record?.response ? { ...record, response: this.cipher.open(scoped, record.response) } : record;
  }

  /**
   * Operator action: frees an in-progress key whose owner is gone (a process that died
   * with a long lease, a stuck job), so that the next request with it runs. Returns false
   * when the identity has no in-progress record. Logged (method, route and `recordRef`,
   * never the key). The owner, if it was alive after all, is fenced out of completing.
   */
  async releaseRecord(identity: RecordIdentity): Promise<boolean> {
    const scoped = { ...identity, scope: storedScope(identity.scope) };
    const released = await this.store.releaseRecord(scoped);
    this.logger.log(auditLine('release', scoped, released ? 'released' : 'no in-progress record'));
    return released;
  }

  /**
   * Operator action: deletes the identity's record, completed or not, so that the key runs
   * afresh. Returns the status it had, or null when there was none. Logged like `releaseRecord()`.
   */
  async deleteRecord(identity: RecordIdentity): Promise<RecordStatus | null> {
    const scoped = { ...identity, scope: storedScope(identity.scope) };
    const deleted = await this.store.deleteRecord(scoped);
    this.logger.log(auditLine('delete', scoped, deleted ? `deleted (was ${deleted})` : 'no record'));
    return deleted;
  }

  /** Deletes expired records in bounded batches; returns how many were deleted. */
  purgeExpired(options?: PurgeOptions): Promise<number> {
    return this.store.purgeExpired(options);
  }

  /**
   * Replays (and 422s) first, with one plain indexed read: a completed record needs no
   * claim statement and no transaction, and holds no pooled connection beyond the query,
   * which matters most in a retry storm. A first execution pays it as one extra read
   * (only where the mode's claim cannot answer replays itself).
   */
  private async answerFromCompleted(attempt: Attempt): Promise<Outcome | undefined> {
    const { flow } = this;
    const existing = await flow.storeCall(() => this.store.find(attempt.identity, attempt.acquireBy));
    if (existing?.status !== 'completed') return undefined;
    return flow.answerOrWait({ record: existing, expired: false, leaseLapsed: false }, attempt, 0);
  }

  /** The mode is chosen here, once per call, from the resolved options. */
  private modeOf(options: ResolvedRouteOptions): ExecutionMode {
    return options.transactional ? this.transactional : this.lease;
  }

  /** Timer-driven purges never overlap: a slow one makes the next tick skip. */
  private async purgeInBackground(): Promise<void> {
    if (this.purging) return;
    this.purging = true;
    try {
      const deleted = await this.purgeExpired();
      if (deleted > 0) this.logger.log(`purged ${deleted} expired idempotency records`);
    } catch (error) {
      this.logger.warn(`purge of expired records failed: ${describeError(error)}`);
    } finally {
      this.purging = false;
    }
  }
}

/**
 * The scope as stored: long ones (a 3000-character subject) as their SHA-256, since the
 * record's identity is a primary key whose index entries have a size limit. A scope that
 * already looks like such a hash is hashed too, so that no caller can pick a scope equal to
 * another caller's stored hash.
 */
export function storedScope(scope: string): string {
  if (Buffer.byteLength(scope, 'utf8') <= MAX_STORED_SCOPE_BYTES && !scope.startsWith(HASHED_SCOPE)) return scope;
  return HASHED_SCOPE + createHash('sha256').update(scope, 'utf8').digest('hex');
}

function storedIdentity(identity: RecordIdentity): RecordIdentity {
  return { ...identity, scope: storedScope(identity.scope) };
}
