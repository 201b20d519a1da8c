// `nestjs-idempotency-postgres/testing`: what the author of a custom store needs. The main
// entry point stays free of it; nothing here imports a test framework.
export {
  describeStoreContract,
  type ContractMatchers,
  type ContractTestApi,
  type StoreHarness,
} from './store-contract.js';
export { ManualClock } from './manual-clock.js';
export {
  HOUR,
  identity,
  LEASE,
  lost,
  MINUTE,
  request,
  RESPONSE,
  SECOND,
  won,
  type Observed,
} from './store-fixtures.js';
export {
  type ClaimDecision,
  decideClaim,
  type IdempotencyRecord,
  type ObservedRecord,
  type RecordIdentity,
  type RecordStatus,
  type SealedResponse,
  type StoredResponse,
} from '../core/record.js';
export {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  purgeLimits,
  type ResponsePayload,
  type StoreTransaction,
  UnstorableResponseError,
} from '../storage/idempotency.store.js';
export { MemoryIdempotencyStore } from '../storage/memory.store.js';
