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
  /** Payment events and receipts over RabbitMQ; off when RABBITMQ_URL is unset. */
  messaging?: MessagingConfig;
}

export interface MessagingConfig {
  /** `RABBITMQ_URL`, e.g. amqp://guest:guest@127.0.0.1:5672. */
  url: string;
  /** `RABBITMQ_QUEUE`: the queue that payment events are published to and consumed from. */
  queue: string;
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
    messaging: process.env.RABBITMQ_URL
      ? { url: process.env.RABBITMQ_URL, queue: process.env.RABBITMQ_QUEUE || 'sample-app.payment-events' }
      : undefined,
  };
}

/** Provider token of the config inside the app. */
export const SAMPLE_CONFIG = Symbol('SAMPLE_CONFIG');
/** Provider token of the RabbitMQ settings inside the payment events' module. */
export const MESSAGING_CONFIG = Symbol('MESSAGING_CONFIG');
