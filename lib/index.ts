// The whole public surface of the library. Anything not exported here is internal.
export { IdempotencyModule } from './idempotency.module.js';
export { Idempotent, IDEMPOTENT_METADATA } from './idempotent.decorator.js';
export { IdempotentClient, IdempotentManager, IdempotentTransaction } from './core/idempotent-transaction.js';
export { IdempotencyService } from './core/idempotency.service.js';
export {
  IdempotentTransactionalAdapterTypeOrm,
  type IdempotentTypeOrmAdapterOptions,
  type IdempotentTypeOrmTransactionOptions,
} from './nestjs-cls/idempotent-typeorm.adapter.js';
export type { IdempotentRunOptions } from './core/run-options.js';
export { IdempotentMethod, type IdempotentMethodOptions } from './method/idempotent-method.decorator.js';
export { currentIdempotentCall, type IdempotentCall } from './method/current-call.js';
export { IdempotencyInterceptor, REPLAYED_HEADER } from './http/idempotency.interceptor.js';
export { IdempotencyExceptionFilter } from './http/idempotency.filter.js';
export { MessageIdempotencyInterceptor } from './microservices/message.interceptor.js';
export { recordRef } from './operator/record-ref.js';
export type { IdempotencyEvent, IdempotencyEventListener, IdempotencyEventType } from './observability/events.js';
export {
  DEFAULT_REPLAY_HEADERS,
  type ConcurrencyMode,
  type ErrorStoragePolicy,
  type IdempotencyModuleExtras,
  type IdempotencyModuleOptions,
  type IdempotencyPoolFactory,
  type IdempotentRouteOptions,
  type ScopeResolver,
} from './idempotency.options.js';
export {
  IdempotencyError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  InvalidIdempotencyInputError,
  InvalidIdempotencyKeyError,
  MissingMessageKeyError,
  UnguardedMessageError,
  MissingMethodKeyError,
  MissingIdempotencyKeyError,
  PROBLEM_TYPE_BASE,
  RequestInProgressError,
  ResponseNotReplayableError,
  UnparsedBodyError,
  UnresolvedScopeError,
  type ProblemDetails,
} from './errors.js';
export type { IdempotencyRecord, RecordIdentity, RecordStatus, SealedResponse, StoredResponse } from './core/record.js';
export { canonicalJson, fingerprintOf, type FingerprintParts, type FingerprintSecret } from './core/fingerprint.js';
export type { ResponseEncryptionKey } from './core/response-cipher.js';
export { parseIdempotencyKey } from './http/request-identity.js';
export {
  IdempotencyStore,
  type ClaimRequest,
  type ClaimResult,
  type PurgeOptions,
  type ResponsePayload,
  type StoreTransaction,
} from './storage/idempotency.store.js';
export { PostgresIdempotencyStore, IDEMPOTENCY_TABLE } from './storage/postgres.store.js';
export { IDEMPOTENCY_SCHEMA_SQL } from './storage/postgres/schema.js';
export { MemoryIdempotencyStore } from './storage/memory.store.js';
export { RedisIdempotencyStore, type RedisClient, type RedisStoreOptions } from './storage/redis.store.js';
export { SplitIdempotencyStore } from './storage/split.store.js';
export {
  CreateIdempotencyKeys1764288000000,
  CreateIdempotencySettings1780000000000,
  idempotencyMigrations,
} from '../migrations/index.js';
