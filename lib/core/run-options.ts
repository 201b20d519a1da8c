import { InvalidIdempotencyInputError } from '../errors.js';
import {
  type IdempotencyModuleOptions,
  type IdempotentRouteOptions,
  type ResolvedRouteOptions,
} from '../idempotency.options.js';
import { resolveRouteOptions, validateOptions } from '../options-resolution.js';
import type { RecordIdentity } from './record.js';
import { isStorableText } from './storable-text.js';

/** What `IdempotencyService.run()` is told about one operation. */
export interface IdempotentRunOptions extends Pick<
  IdempotentRouteOptions,
  'transactional' | 'concurrency' | 'waitTimeoutMs' | 'leaseMs' | 'ttlMs'
> {
  /** What makes two calls the same operation: an order id, a message id, a job id. */
  key: string;
  /** The operation's name (e.g. `'charge-order'`): the same key under another name is another operation. */
  name: string;
  /**
   * Whose key space the key belongs to (a tenant, an account): keys are unique per scope.
   * @default '' (one key space per name)
   */
  scope?: string;
  /**
   * What must be the same for a repeat to get the stored result: a repeat under the same
   * key with another payload throws `IdempotencyKeyReuseError` instead of returning a
   * result computed for other input. Compared by a keyed fingerprint of its canonical JSON;
   * a Map or a Set in it is refused (TypeError), since JSON writes `{}` whatever it holds.
   * @default nothing (the key alone decides)
   */
  payload?: unknown;
  /**
   * Largest result stored, in bytes of its JSON. A larger one is returned to the first
   * caller but not stored; repeats then get `ResponseNotReplayableError`, never a second run.
   * @default the module's `maxResponseBytes`
   */
  maxResultBytes?: number;
}

/** Longest key or name, in UTF-8 bytes, so that a record's identity fits the primary key's index. */
const MAX_IDENTITY_PART_BYTES = 512;

/** @internal The identity and options of one `run()` call, checked. */
export function operationOf(
  moduleOptions: IdempotencyModuleOptions,
  options: IdempotentRunOptions,
): { identity: RecordIdentity; routeOptions: ResolvedRouteOptions; payload: unknown } {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('IdempotencyService.run(): the first argument must be an options object with key and name.');
  }
  const { key, name, scope = '', payload, maxResultBytes, ...overrides } = options;
  const where = `IdempotencyService.run(${typeof name === 'string' ? JSON.stringify(name) : ''})`;
  checkIdentityPart(name, 'name', where, false);
  checkIdentityPart(key, 'key', where, false);
  checkIdentityPart(scope, 'scope', where, true);
  const routeOptions = resolveRouteOptions(moduleOptions, { ...overrides, maxResponseBytes: maxResultBytes });
  validateOptions(routeOptions, where);
  // No HTTP method is lower-case: a call's record never collides with a request's.
  return { identity: { scope, method: 'call', route: name, key }, routeOptions, payload };
}

/**
 * A key, name or scope must be text the store keeps exactly: PostgreSQL text holds no NUL,
 * and the driver would turn a lone surrogate into U+FFFD, merging two keys into one.
 */
export function checkIdentityPart(value: unknown, what: string, where: string, emptyAllowed: boolean): void {
  const problem =
    typeof value !== 'string'
      ? `must be a string, got ${value === null ? 'null' : typeof value}`
      : value === '' && !emptyAllowed
        ? 'must not be empty'
        : !isStorableText(value)
          ? 'must not contain NUL or lone surrogates'
          : Buffer.byteLength(value, 'utf8') > MAX_IDENTITY_PART_BYTES
            ? `must be at most ${MAX_IDENTITY_PART_BYTES} bytes of UTF-8`
            : undefined;
  if (problem) throw new InvalidIdempotencyInputError(`${where}: the ${what} ${problem}.`);
}
