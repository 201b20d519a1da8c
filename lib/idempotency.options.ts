import type { ExecutionContext, HttpException, Type } from '@nestjs/common';
import type { IdempotencyStore } from './storage/idempotency.store.js';

/** What a duplicate that arrives while the first request is still running receives. */
export type ConcurrencyMode =
  /** 409 Conflict with `Retry-After` at once (IETF draft, Stripe). */
  | 'reject'
  /** Wait for the first request and answer with its stored response; 409 after `waitTimeoutMs`. */
  | 'wait';

/** Resolves the caller's identity, the scope in which keys are unique. */
export type ScopeResolver = (request: any, context: ExecutionContext) => string | Promise<string>;

/** Decides whether a thrown HttpException is a final answer to store and replay. */
export type ErrorStoragePolicy = (status: number, error: HttpException) => boolean;

/** Options that a route may override with `@Idempotent({...})`. */
export interface IdempotentRouteOptions {
  /**
   * Whether a request without a key is refused (400) or passes through untouched.
   * @default true
   */
  required?: boolean;
  /**
   * Transactional mode: the record is claimed in a database transaction that stays open
   * while the handler runs; the handler writes through that transaction's EntityManager
   * (`@IdempotentManager()` or `IdempotentTransaction`), and its writes commit together
   * with the stored response, or not at all. Needs the PostgreSQL store.
   * @default false (lease mode)
   */
  transactional?: boolean;
  /**
   * What a duplicate receives while the first request is in flight.
   * @default 'reject'
   */
  concurrency?: ConcurrencyMode;
  /**
   * With `concurrency: 'wait'`: how long a duplicate waits before it gets 409.
   * @default 10000
   */
  waitTimeoutMs?: number;
  /**
   * How long a claim holds without renewal. A running request renews it every third of
   * this time, so it bounds only how long a key stays blocked after its process died.
   * @default 30000
   */
  leaseMs?: number;
  /**
   * How long a completed record is replayed, counted from completion. An expired record
   * counts as absent: the key may be used again.
   * @default 86400000 (24 hours)
   */
  ttlMs?: number;
  /**
   * Which thrown HttpExceptions are stored and replayed like successes. Errors that are
   * not HttpExceptions are never stored. Requests rejected before the handler ran
   * (guards, pipes) are never stored either.
   * @default 4xx are stored except 408, 409, 425 and 429; 5xx are not (the key is released so a retry runs again)
   */
  storeErrors?: ErrorStoragePolicy;
  /**
   * What besides the body and the path parameters identifies "the same request": with a
   * different fingerprint, a reused key gets 422.
   * @default { query: true, headers: [] }
   */
  fingerprint?: {
    /** Include the query string's parameters. */
    query?: boolean;
    /** Include these request headers (names are case-insensitive). */
    headers?: string[];
  };
  /**
   * Response headers stored and replayed. `Set-Cookie` is never stored, even if listed.
   * @default content-type, content-disposition, content-language, location, content-location, cache-control, etag, last-modified, link, vary
   */
  replayHeaders?: string[];
  /**
   * Largest body stored, in bytes. A larger response is sent to the first client but not
   * stored; retries then get 410 instead of running the handler again.
   * @default 1048576 (1 MiB)
   */
  maxResponseBytes?: number;
}

/** Module options: defaults for every route, plus what only the module decides. */
export interface IdempotencyModuleOptions extends IdempotentRouteOptions {
  /**
   * Name of the request header carrying the key.
   * @default 'Idempotency-Key'
   */
  headerName?: string;
  /**
   * Longest accepted key, in characters.
   * @default 255
   */
  maxKeyLength?: number;
  /**
   * The caller's identity: keys are unique per (scope, method, route, key), so one
   * caller can never receive another's stored response. Return '' for anonymous callers.
   * @default `request.user.id ?? .sub ?? .userId`; '' without `request.user`; an error when `request.user` has none of them
   */
  scope?: ScopeResolver;
  /**
   * `Retry-After` seconds sent with 409 (in progress) and 503 (store unavailable).
   * @default 1
   */
  retryAfterSeconds?: number;
  /**
   * Run a batched purge of expired records this often on every instance (safe to run on
   * several: rows are claimed with SKIP LOCKED). `false` leaves purging to you
   * (`IdempotencyService.purgeExpired()`).
   * @default false
   */
  purgeIntervalMs?: number | false;
}

/**
 * Options that decide how the module is wired; they are read when the module is
 * defined, so they sit outside `useFactory`.
 */
export interface IdempotencyModuleExtras {
  /**
   * Register the module globally.
   * @default true
   */
  isGlobal?: boolean;
  /**
   * Name of the TypeORM DataSource that holds `idempotency_keys` (the `name` given to
   * `TypeOrmModule.forRoot`).
   * @default the default DataSource
   */
  dataSource?: string;
  /**
   * Another store implementation, e.g. `MemoryIdempotencyStore` in unit tests; no
   * DataSource is needed then.
   * @default PostgresIdempotencyStore
   */
  store?: Type<IdempotencyStore>;
}

export const DEFAULT_REPLAY_HEADERS: readonly string[] = [
  'content-type',
  'content-disposition',
  'content-language',
  'location',
  'content-location',
  'cache-control',
  'etag',
  'last-modified',
  'link',
  'vary',
];

/**
 * The authenticated principal's id (`id`, `sub` or `userId`: the shapes Passport and the
 * NestJS JWT recipes produce), or '' when the request carries no principal at all. A
 * principal without a recognisable id is an error, never the shared anonymous scope:
 * otherwise every user would share one scope and could read each other's responses.
 */
const defaultScope: ScopeResolver = (request) => {
  const user = request?.user;
  if (user === undefined || user === null) return '';
  const id = user.id ?? user.sub ?? user.userId;
  if (id === undefined || id === null || id === '') {
    throw new Error(
      'IdempotencyModule: request.user has no id, sub or userId, so the caller cannot be told apart; ' +
        'set the "scope" option to return the caller\'s identity.',
    );
  }
  return String(id);
};

/**
 * 4xx are the operation's final answer, except the statuses that mean "not now" and
 * invite the same request again (Request Timeout, Conflict, Too Early, Too Many Requests):
 * replaying those for a day would turn a transient refusal into a permanent one.
 */
const TRANSIENT_CLIENT_ERRORS = new Set([408, 409, 425, 429]);
const storeClientErrors: ErrorStoragePolicy = (status) =>
  status >= 400 && status < 500 && !TRANSIENT_CLIENT_ERRORS.has(status);

/** Options of one route after defaults, module options and route options are merged. */
export type ResolvedRouteOptions = Required<Omit<IdempotentRouteOptions, 'fingerprint'>> & {
  fingerprint: { query: boolean; headers: string[] };
  headerName: string;
  maxKeyLength: number;
  scope: ScopeResolver;
  retryAfterSeconds: number;
};

const DEFAULTS: ResolvedRouteOptions = {
  required: true,
  transactional: false,
  concurrency: 'reject',
  waitTimeoutMs: 10_000,
  leaseMs: 30_000,
  ttlMs: 24 * 60 * 60 * 1000,
  storeErrors: storeClientErrors,
  fingerprint: { query: true, headers: [] },
  replayHeaders: [...DEFAULT_REPLAY_HEADERS],
  maxResponseBytes: 1024 * 1024,
  headerName: 'Idempotency-Key',
  maxKeyLength: 255,
  scope: defaultScope,
  retryAfterSeconds: 1,
};

/**
 * Later sources override earlier ones; `undefined` never overrides. `fingerprint` is
 * merged field by field, so a route can add headers without dropping the module's `query`.
 */
export function resolveRouteOptions(
  ...sources: Array<IdempotencyModuleOptions | IdempotentRouteOptions | undefined>
): ResolvedRouteOptions {
  const merged: Record<string, unknown> = { ...DEFAULTS };
  const fingerprint: Record<string, unknown> = { ...DEFAULTS.fingerprint };
  for (const source of sources) {
    for (const [name, value] of Object.entries(source ?? {})) {
      if (value === undefined) continue;
      if (name === 'fingerprint') {
        for (const [field, setting] of Object.entries(value)) if (setting !== undefined) fingerprint[field] = setting;
      } else {
        merged[name] = value;
      }
    }
  }
  const resolved = merged as ResolvedRouteOptions;
  const { query, headers } = fingerprint as ResolvedRouteOptions['fingerprint'];
  return {
    ...resolved,
    fingerprint: { query, headers: headers.map((h) => h.toLowerCase()) },
    // Cookies are credentials of one client: replaying them to another is a leak.
    replayHeaders: resolved.replayHeaders.map((h) => h.toLowerCase()).filter((h) => h !== 'set-cookie'),
  };
}

/** Longest key the table accepts: the key is part of a B-tree index entry, which has a size limit. */
export const MAX_KEY_LENGTH = 1024;

/** Rejects option values that cannot work, at start-up rather than on the first request. */
export function validateOptions(options: ResolvedRouteOptions, where: string): void {
  const positive = ['waitTimeoutMs', 'leaseMs', 'ttlMs', 'maxResponseBytes', 'maxKeyLength'] as const;
  for (const name of positive) {
    const value = options[name];
    if (!Number.isFinite(value) || value <= 0) {
      throw new Error(`IdempotencyModule: ${where}: "${name}" must be a positive number, got ${value}.`);
    }
  }
  if (options.maxKeyLength > MAX_KEY_LENGTH) {
    throw new Error(`IdempotencyModule: ${where}: "maxKeyLength" may be at most ${MAX_KEY_LENGTH} (index entry size).`);
  }
  if (!Number.isInteger(options.retryAfterSeconds) || options.retryAfterSeconds < 0) {
    throw new Error(`IdempotencyModule: ${where}: "retryAfterSeconds" must be a whole number of seconds.`);
  }
  for (const name of ['scope', 'storeErrors'] as const) {
    if (typeof options[name] !== 'function') {
      throw new Error(`IdempotencyModule: ${where}: "${name}" must be a function.`);
    }
  }
  if (options.concurrency !== 'reject' && options.concurrency !== 'wait') {
    throw new Error(`IdempotencyModule: ${where}: "concurrency" must be 'reject' or 'wait'.`);
  }
  if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(options.headerName)) {
    throw new Error(`IdempotencyModule: ${where}: "headerName" is not a valid header name.`);
  }
}
