// The whole public surface of the library. Anything not exported here is internal.
export { IdempotencyModule } from './idempotency.module.js';
export { Idempotent, IDEMPOTENT_METADATA } from './idempotent.decorator.js';
export { IdempotentManager, IdempotentTransaction } from './idempotent-transaction.js';
export { IdempotencyService } from './idempotency.service.js';
export type { Outcome } from './execution.js';
export { IdempotencyInterceptor, REPLAYED_HEADER } from './idempotency.interceptor.js';
export { IdempotencyExceptionFilter } from './idempotency.filter.js';
export {
  DEFAULT_REPLAY_HEADERS,
  type ConcurrencyMode,
  type ErrorStoragePolicy,
  type IdempotencyModuleExtras,
  type IdempotencyModuleOptions,
  type IdempotentRouteOptions,
  type ScopeResolver,
} from './idempotency.options.js';
export {
  IdempotencyError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  InvalidIdempotencyKeyError,
  MissingIdempotencyKeyError,
  PROBLEM_TYPE_BASE,
  RequestInProgressError,
  ResponseNotReplayableError,
  UnparsedBodyError,
  UnresolvedScopeError,
  type ProblemDetails,
} from './errors.js';
export type { IdempotencyRecord, RecordIdentity, RecordStatus, SealedResponse, StoredResponse } from './record.js';
export { canonicalJson, fingerprintOf, type FingerprintParts, type FingerprintSecret } from './fingerprint.js';
export type { ResponseEncryptionKey } from './response-cipher.js';
export { parseIdempotencyKey } from './request-identity.js';
export {
  IdempotencyStore,
  type ClaimRequest,
  type ClaimResult,
  type PurgeOptions,
  type ResponsePayload,
  type StoreTransaction,
} from './storage/idempotency.store.js';
export { PostgresIdempotencyStore, IDEMPOTENCY_TABLE } from './storage/postgres.store.js';
export { MemoryIdempotencyStore } from './storage/memory.store.js';
export {
  CreateIdempotencyKeys1764288000000,
  CreateIdempotencySettings1780000000000,
  idempotencyMigrations,
} from '../migrations/index.js';
