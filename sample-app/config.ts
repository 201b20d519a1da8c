/** The sample app's settings, all from the environment (the contract in the README). */
export interface SampleConfig {
  /** PostgreSQL URL; when unset, `main.ts` starts an embedded server and fills it in. */
  databaseUrl: string;
  /** Simulated payment-provider delay inside the handlers. */
  providerLatencyMs: number;
  /** Lease of in-flight keys (short values make crash tests quick). */
  leaseMs?: number;
  /** How long `concurrency: 'wait'` duplicates wait. */
  waitTimeoutMs?: number;
  /** How long completed keys are replayed. */
  ttlMs?: number;
  /** `METRICS=1`: the library's OpenTelemetry metrics, served in Prometheus format at /metrics. */
  metrics: boolean;
  /** Payment events and receipts over RabbitMQ; off when RABBITMQ_URL is unset. */
  messaging?: MessagingConfig;
  /** Scheduled settlements through a BullMQ queue on Redis; off when REDIS_URL is unset. */
  settlements?: SettlementsConfig;
  /**
   * `IDEMPOTENCY_STORE`: where idempotency records live. `postgres` (the default): all in
   * `idempotency_keys`, through TypeORM's DataSource. `redis` (needs REDIS_URL): lease-mode
   * routes in Redis, under the key prefix `<BULLMQ_PREFIX>:idempotency:`; transactional
   * routes stay in PostgreSQL, where their writes commit with their records. `pool`: all in
   * `idempotency_keys` too, but the library runs on a node-postgres Pool of its own (the
   * module option `pool`), not on the DataSource, and POST /payments writes its row with SQL
   * through the transaction's client. TypeORM still runs the migrations and the lease-mode
   * routes. The broker features write through TypeORM's EntityManager, which a pool store
   * does not hand out: `pool` refuses to start with RABBITMQ_URL or REDIS_URL set.
   */
  idempotencyStore: IdempotencyStoreKind;
}

export interface MessagingConfig {
  /** `RABBITMQ_URL`, e.g. amqp://guest:guest@127.0.0.1:5672. */
  url: string;
  /** `RABBITMQ_QUEUE`: the queue that payment events are published to and consumed from. */
  queue: string;
}

export interface SettlementsConfig {
  /** `REDIS_URL`, e.g. redis://127.0.0.1:6379. */
  redisUrl: string;
  /** `BULLMQ_PREFIX`: the prefix of the queue's Redis keys, so that apps sharing a Redis stay apart. */
  prefix: string;
  /** `SETTLEMENT_INTERVAL_MS`: one settlement per interval, across all instances. */
  intervalMs: number;
}

export function numberFromEnv(name: string, fallback?: number): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, got "${raw}"`);
  return value;
}

export function configFromEnv(databaseUrl: string): SampleConfig {
  return {
    databaseUrl,
    providerLatencyMs: numberFromEnv('PROVIDER_LATENCY_MS', 0)!,
    leaseMs: numberFromEnv('IDEMPOTENCY_LEASE_MS'),
    waitTimeoutMs: numberFromEnv('IDEMPOTENCY_WAIT_TIMEOUT_MS'),
    ttlMs: numberFromEnv('IDEMPOTENCY_TTL_MS'),
    metrics: process.env.METRICS === '1',
    messaging: process.env.RABBITMQ_URL
      ? { url: process.env.RABBITMQ_URL, queue: process.env.RABBITMQ_QUEUE || 'sample-app.payment-events' }
      : undefined,
    settlements: process.env.REDIS_URL
      ? {
          redisUrl: process.env.REDIS_URL,
          prefix: process.env.BULLMQ_PREFIX || 'sample-app',
          intervalMs: settlementIntervalFromEnv(),
        }
      : undefined,
    idempotencyStore: idempotencyStoreFromEnv(),
  };
}

export type IdempotencyStoreKind = 'postgres' | 'redis' | 'pool';

/**
 * `IDEMPOTENCY_STORE`: `postgres` (default), `redis`, which needs REDIS_URL, or `pool`,
 * which runs without the broker features (see `SampleConfig.idempotencyStore`).
 */
export function idempotencyStoreFromEnv(): IdempotencyStoreKind {
  const store = process.env.IDEMPOTENCY_STORE || 'postgres';
  if (store !== 'postgres' && store !== 'redis' && store !== 'pool') {
    throw new Error(`IDEMPOTENCY_STORE must be "postgres", "redis" or "pool", got "${store}"`);
  }
  if (store === 'redis' && !process.env.REDIS_URL) throw new Error('IDEMPOTENCY_STORE=redis needs REDIS_URL');
  if (store === 'pool') {
    const brokers = ['RABBITMQ_URL', 'REDIS_URL'].filter((name) => process.env[name]);
    // Their handlers (outbox, receipts, settlements) write through IdempotentTransaction.manager,
    // which a store on a pg Pool does not have: they would fail on their first message or job.
    if (brokers.length) {
      throw new Error(
        `IDEMPOTENCY_STORE=pool runs without the broker features, which write through TypeORM's ` +
          `EntityManager: unset ${brokers.join(' and ')}, or use IDEMPOTENCY_STORE=postgres`,
      );
    }
  }
  return store;
}

/** `SETTLEMENT_INTERVAL_MS`, default a minute; below 100 ms a tick would be mostly overhead. */
export function settlementIntervalFromEnv(): number {
  const intervalMs = numberFromEnv('SETTLEMENT_INTERVAL_MS', 60_000)!;
  if (!Number.isInteger(intervalMs) || intervalMs < 100) {
    throw new Error(`SETTLEMENT_INTERVAL_MS must be a whole number of milliseconds, at least 100; got ${intervalMs}`);
  }
  return intervalMs;
}

/** Provider token of the config inside the app. */
export const SAMPLE_CONFIG = Symbol('SAMPLE_CONFIG');
/** Provider token of the RabbitMQ settings inside the payment events' module. */
export const MESSAGING_CONFIG = Symbol('MESSAGING_CONFIG');
