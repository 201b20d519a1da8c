import type {
  DynamicModule,
  ExecutionContext,
  ForwardReference,
  HttpException,
  InjectionToken,
  Type,
} from '@nestjs/common';
import type { Pool } from 'pg';
import type { FingerprintSecret } from './core/fingerprint.js';
import type { IdempotencyEventListener } from './observability/events.js';
import type { ResponseEncryptionKey } from './core/response-cipher.js';
import type { IdempotencyStore } from './storage/idempotency.store.js';
import type { RedisStoreOptions } from './storage/redis.store.js';

/** What a duplicate that arrives while the first request is still running receives. */
export type ConcurrencyMode =
  /** 409 Conflict with `Retry-After` at once (IETF draft, Stripe). */
  | 'reject'
  /** Wait for the first request and answer with its stored response; 409 after `waitTimeoutMs`. */
  | 'wait';

/**
 * Resolves the caller's identity, the scope in which keys are unique: a non-empty string.
 * Anything else (nothing, '', a number) refuses the request with a 500 problem, never a
 * shared scope. Throw an HttpException (e.g. UnauthorizedException) to answer with it.
 */
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
   * @default 'reject'; message handlers: 'wait' (where no level sets it)
   */
  concurrency?: ConcurrencyMode;
  /**
   * With `concurrency: 'wait'`: how long a duplicate waits before it gets 409.
   * @default 10000; message handlers: `leaseMs` + 10000 (where no level sets it), so that a redelivery after a crash takes over
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
  /**
   * The caller's identity: keys are unique per (scope, method, route, key), so one
   * caller can never receive another's stored response. Must return a non-empty string;
   * for a public API whose callers deliberately share one key space, return a constant.
   * Message handlers get `(data, context)`, and without a scope on their decorators their
   * keys are unique per pattern (the module's scope is for HTTP).
   * @default `request.user.id ?? .sub ?? .userId`; refuses requests without `request.user` or without any of those ids
   */
  scope?: ScopeResolver;
  /**
   * HTTP routes only: for requests that come without a key (a double-clicked form, a
   * webhook sender that sends no id), derive one from the caller's scope, the route and
   * the request's fingerprint, so that the same request from the same caller within
   * `windowMs` of the first one's completion gets its stored response. A request that
   * sends a key always uses its own. Right for forms and webhooks; wrong where two
   * identical requests are two genuine operations (two equal payments): there, clients
   * must send keys.
   * @default off: a request without a key gets 400 (or passes through with `required: false`)
   */
  derive?: { windowMs: number };
  /**
   * Message handlers only (`@MessagePattern`, `@EventPattern`): the message's key. Return
   * undefined when the message has none.
   * @default the message's own id: the AMQP `messageId` property (RabbitMQ), the `Nats-Msg-Id` header (NATS)
   */
  key?: (data: any, context: any) => string | undefined | Promise<string | undefined>;
  /**
   * Message handlers only: called once a message is done, that is after its result is
   * stored (its first run; in transactional mode, after the commit), and instead of the
   * handler for a duplicate of a completed message. Acknowledge the message here, not in
   * the handler, if your consumer acknowledges messages itself (RabbitMQ with
   * `noAck: false`): acknowledged before the commit, a message would be lost if the
   * process died in between. Not called when the handler (or the library) throws.
   */
  acknowledge?: (data: any, context: any) => unknown;
}

/** Module options: defaults for every route, plus what only the module decides. */
export interface IdempotencyModuleOptions extends IdempotentRouteOptions {
  /**
   * Called with every outcome of every idempotent call (claimed, executed, completed,
   * released, replayed, conflict, key-reused, store-error), with its scope, method, route,
   * mode and timings; never a key, a body or a header. Synchronous, on the request's path:
   * keep it cheap. A listener that throws is logged and ignored.
   * @default none
   */
  onEvent?: IdempotencyEventListener;
  /**
   * Record OpenTelemetry metrics through `@opentelemetry/api` (an optional peer; the
   * application registers the SDK and its exporter): the counter `idempotency.outcomes`
   * and the histograms `idempotency.claim.duration` and `idempotency.wait.duration` (ms),
   * by outcome, method, route and mode.
   * @default false
   */
  metrics?: boolean;
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
  /**
   * Secret for the request fingerprints (HMAC-SHA-256), so that stored fingerprints reveal
   * nothing of the payloads. A list rotates: the first secret fingerprints new requests,
   * the others are still recognised on records written under them (keep a retired secret
   * in the list for one `ttlMs`).
   * @default a random secret created once and kept in the `idempotency_settings` table (memory store: per process)
   */
  fingerprintSecret?: FingerprintSecret | readonly FingerprintSecret[];
  /**
   * Encrypt stored responses at rest with AES-256-GCM. The first key encrypts new records;
   * every listed key decrypts the records written under its id, so keys rotate by adding
   * a new one in front and dropping the old one once its records have expired.
   * @default no encryption
   */
  encryptionKeys?: readonly ResponseEncryptionKey[];
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
   * Run the PostgreSQL store on this node-postgres Pool instead of a TypeORM DataSource:
   * neither TypeORM nor `@nestjs/typeorm` is needed (nor loaded) then. Transactional routes
   * write through the transaction's client (`@IdempotentClient()`,
   * `IdempotentTransaction.client`), there is no EntityManager. A Pool, or a factory for
   * one that Nest calls with the `inject`ed providers of the `imports`. The application
   * owns the pool (and ends it at shutdown). See the README, "Without TypeORM".
   * @default the TypeORM DataSource (`dataSource`)
   */
  pool?: Pool | IdempotencyPoolFactory;
  /**
   * Register the HTTP and message interceptors and the problem filter for the whole
   * application. With `false`, nothing is registered application-wide: each controller with
   * `@Idempotent()` routes names them itself, with `@UseInterceptors(IdempotencyInterceptor)`
   * (`MessageIdempotencyInterceptor` for message handlers) and
   * `@UseFilters(IdempotencyExceptionFilter)`. A decorated route whose controller or method
   * does not name the interceptor fails the start-up, so that it never runs unguarded.
   * @default true
   */
  global?: boolean;
  /**
   * The PostgreSQL store sends each request's statements as prepared statements (parsed and
   * planned once per connection). Set `false` behind a pooler that does not keep a session's
   * prepared statements: PgBouncer in transaction mode before 1.21, or without
   * `max_prepared_statements`.
   * @default true
   */
  preparedStatements?: boolean;
  /**
   * Another store implementation, e.g. `MemoryIdempotencyStore` in unit tests; no
   * DataSource is needed then.
   * @default PostgresIdempotencyStore
   */
  store?: Type<IdempotencyStore>;
  /**
   * Keep the records in Redis instead (`RedisIdempotencyStore`): an `ioredis` client
   * (`Redis` or `Cluster`), `ioredis` options or a URL, and the store's own options.
   * Neither TypeORM nor PostgreSQL is needed (nor loaded) then; transactional routes are
   * refused at start-up. See the README, "Redis store".
   */
  redis?: RedisStoreOptions;
}

/** A Pool made by Nest, with other providers: the module option `pool`. */
export interface IdempotencyPoolFactory {
  useFactory: (...dependencies: any[]) => Pool | Promise<Pool>;
  inject?: InjectionToken[];
  imports?: Array<Type | DynamicModule | Promise<DynamicModule> | ForwardReference>;
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

/** The fields of `request.user` the default scope looks at. */
interface Principal {
  id?: unknown;
  sub?: unknown;
  userId?: unknown;
}

/**
 * The authenticated principal's id (`id`, `sub` or `userId`: the shapes Passport and the
 * NestJS JWT recipes produce). Without a principal, or with one that has no recognisable
 * id, the request is refused rather than put in a shared anonymous scope: there, any
 * caller who learns or guesses another's key would receive that caller's response.
 */
const defaultScope: ScopeResolver = (request: { user?: Principal | null } | undefined) => {
  const user = request?.user;
  if (user === undefined || user === null) {
    throw new Error(
      'the request has no authenticated principal (request.user), and the default scope refuses anonymous ' +
        'callers so that they never share one key space. Authenticate the route (a guard that sets request.user), ' +
        'or set the "scope" option (e.g. scope: (request) => request.headers["x-api-key-id"]).',
    );
  }
  const id = user.id ?? user.sub ?? user.userId;
  // Only ids whose text is the id: String() of an object is "[object Object]" for every user.
  const usable =
    (typeof id === 'string' && id !== '') || (typeof id === 'number' && Number.isFinite(id)) || typeof id === 'bigint';
  if (!usable) {
    throw new Error(
      `request.user has no usable id, sub or userId (a non-empty string or a number; found ${id === null ? 'null' : typeof id}), ` +
        'so the caller cannot be told apart; set the "scope" option to return the caller\'s identity.',
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

/** Options that belong to one context and are read from the decorators, never from the module. */
export type ContextOptions = 'derive' | 'key' | 'acknowledge';

/** Options of one route after defaults, module options and route options are merged. */
export type ResolvedRouteOptions = Required<Omit<IdempotentRouteOptions, 'fingerprint' | ContextOptions>> & {
  fingerprint: { query: boolean; headers: string[] };
  headerName: string;
  maxKeyLength: number;
  scope: ScopeResolver;
  retryAfterSeconds: number;
};

/** Every route option's default, in one place (the doc comments above say the same). */
export const DEFAULTS: ResolvedRouteOptions = {
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
