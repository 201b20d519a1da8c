import {
  DEFAULTS,
  type IdempotencyModuleOptions,
  type IdempotentRouteOptions,
  type ResolvedRouteOptions,
} from './idempotency.options.js';

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
        if (value === null || typeof value !== 'object')
          throw new Error('IdempotencyModule: "fingerprint" must be an object.');
        for (const [field, setting] of Object.entries(value as object))
          if (setting !== undefined) fingerprint[field] = setting;
      } else {
        merged[name] = value;
      }
    }
  }
  const resolved = merged as ResolvedRouteOptions;
  const { query, headers } = fingerprint as ResolvedRouteOptions['fingerprint'];
  for (const [name, list] of [
    ['fingerprint.headers', headers],
    ['replayHeaders', resolved.replayHeaders],
  ] as const) {
    if (!Array.isArray(list) || !list.every((item) => typeof item === 'string')) {
      throw new Error(`IdempotencyModule: "${name}" must be an array of header names.`);
    }
  }
  return {
    ...resolved,
    fingerprint: { query, headers: headers.map((h) => h.toLowerCase()) },
    // Cookies are credentials of one client: replaying them to another is a leak.
    replayHeaders: resolved.replayHeaders.map((h) => h.toLowerCase()).filter((h) => h !== 'set-cookie'),
  };
}

/** Longest delay a Node.js timer holds (larger ones fire at once), and the most PostgreSQL's lock_timeout takes. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The range of each numeric option: durations that feed a timer or lock_timeout stay within
 * what those accept; the TTL within what PostgreSQL's timestamps can add (with room to spare).
 */
const NUMERIC_LIMITS = {
  waitTimeoutMs: [1, MAX_TIMER_MS],
  // A lease is renewed every third of it: below this, renewals would be a busy loop.
  leaseMs: [30, MAX_TIMER_MS],
  ttlMs: [1, 100 * 365 * 24 * 60 * 60 * 1000],
  // Stored as base64 (and, encrypted, base64 again) in a jsonb string, which holds 256 MiB at most.
  maxResponseBytes: [1, 64 * 2 ** 20],
  maxKeyLength: [1, 1024],
} as const;

/** Rejects option values that cannot work, at start-up rather than on the first request. */
export function validateOptions(options: ResolvedRouteOptions, where: string): void {
  for (const [name, [min, max]] of Object.entries(NUMERIC_LIMITS)) {
    const value = options[name as keyof typeof NUMERIC_LIMITS];
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(
        `IdempotencyModule: ${where}: "${name}" must be a whole number from ${min} to ${max}, got ${value}.`,
      );
    }
  }
  if (
    !Number.isInteger(options.retryAfterSeconds) ||
    options.retryAfterSeconds < 0 ||
    options.retryAfterSeconds > 86_400
  ) {
    throw new Error(`IdempotencyModule: ${where}: "retryAfterSeconds" must be a whole number of seconds up to a day.`);
  }
  for (const name of ['required', 'transactional'] as const) {
    if (typeof options[name] !== 'boolean') {
      throw new Error(
        `IdempotencyModule: ${where}: "${name}" must be true or false, got ${JSON.stringify(options[name])}.`,
      );
    }
  }
  if (typeof options.fingerprint.query !== 'boolean') {
    throw new Error(`IdempotencyModule: ${where}: "fingerprint.query" must be true or false.`);
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

/** Checks the options only the module has (the route options are checked per route). */
export function validateModuleOptions(options: IdempotencyModuleOptions): void {
  if (options === null || typeof options !== 'object') {
    throw new Error(
      `IdempotencyModule: the module options are ${options === null ? 'null' : typeof options}; ` +
        'return an object from the options factory ({} for every default).',
    );
  }
  for (const name of ['derive', 'key', 'acknowledge'] as const) {
    if (options[name] !== undefined) {
      throw new Error(
        `IdempotencyModule: "${name}" belongs to one route or handler: set it in @Idempotent(), not in the module options.`,
      );
    }
  }
  if (options.onEvent !== undefined && typeof options.onEvent !== 'function') {
    throw new Error('IdempotencyModule: "onEvent" must be a function (event) => void.');
  }
  const interval = options.purgeIntervalMs;
  if (
    interval !== undefined &&
    interval !== false &&
    (!Number.isInteger(interval) || interval < 1000 || interval > MAX_TIMER_MS)
  ) {
    throw new Error(
      `IdempotencyModule: "purgeIntervalMs" must be false or a whole number from 1000 to ${MAX_TIMER_MS}, got ${interval}.`,
    );
  }
  const secrets = options.fingerprintSecret === undefined ? [] : [options.fingerprintSecret].flat();
  if (options.fingerprintSecret !== undefined && secrets.length === 0) {
    throw new Error(
      'IdempotencyModule: "fingerprintSecret" is an empty list; give at least one secret, or leave it out.',
    );
  }
  for (const secret of secrets) {
    const length = Buffer.isBuffer(secret) ? secret.length : typeof secret === 'string' ? Buffer.byteLength(secret) : 0;
    if (length < 16) {
      throw new Error(
        'IdempotencyModule: "fingerprintSecret" must be a string or Buffer of at least 16 bytes (better 32 random bytes).',
      );
    }
  }
}

/**
 * Transactional mode needs a key on every call: one that runs without a key would run
 * without the transaction its code writes through.
 */
export function assertKeyedTransaction(keyOptional: boolean, where: string, what: string): void {
  if (keyOptional) {
    throw new Error(
      `${where} is transactional with required: false: a ${what} without a key would run without the ` +
        'transaction its code expects. Make the key required.',
    );
  }
}
