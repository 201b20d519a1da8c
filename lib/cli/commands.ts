import { readFileSync } from 'node:fs';
import { storedScope } from '../core/idempotency.service.js';
import { Fingerprinter, type FingerprintParts } from '../core/fingerprint.js';
import type { RecordIdentity } from '../core/record.js';
import { recordRef } from '../operator/record-ref.js';
import type { Queryable } from '../storage/postgres/connection.js';
import {
  deleteRecord,
  expiredSummary,
  type InspectedRecord,
  inspectRecord,
  listInProgress,
  purgeWithProgress,
  releaseRecord,
  storedSecret,
  storeStats,
} from '../storage/postgres/operator.js';
import { bytes, duration, fields, parseDuration, table, UsageError } from './format.js';
import { migrate } from './migrate.js';

/** What a command gives back: what to print for people, what to print with `--json`, and the exit status. */
export interface CommandResult {
  readonly text: string;
  readonly json: unknown;
  /** 0, or 3 when the record the command is about does not exist or is not in the expected state. */
  readonly status: 0 | 3;
}

export type Options = Record<string, string | boolean | undefined>;

export interface CommandContext {
  readonly db: Queryable;
  readonly options: Options;
  /** Where progress goes (stderr): never mixed with the result on stdout. */
  readonly progress: (line: string, final: boolean) => void;
}

export const NOTHING = 3;

function text(options: Options, name: string): string | undefined {
  const value = options[name];
  return typeof value === 'string' ? value : undefined;
}

function required(options: Options, name: string): string {
  const value = text(options, name);
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

function integer(options: Options, name: string, fallback: number): number {
  const value = text(options, name);
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) throw new UsageError(`--${name} must be a non-negative integer`);
  return parsed;
}

function json(options: Options, name: string): unknown {
  const value = text(options, name);
  if (value === undefined) return undefined;
  try {
    return JSON.parse(value);
  } catch {
    throw new UsageError(`--${name} is not JSON: ${value}`);
  }
}

/**
 * The record's identity as the application stores it: the scope as the scope resolver (or
 * run()'s `scope`) gives it, hashed where the library hashes it.
 */
function identityOf(options: Options): RecordIdentity {
  const method = text(options, 'method') ?? 'POST';
  return {
    scope: storedScope(text(options, 'scope') ?? ''),
    // run() and @IdempotentMethod() records have the method "call"; HTTP methods are upper case.
    method: method.toLowerCase() === 'call' ? 'call' : method.toUpperCase(),
    route: required(options, 'route'),
    key: required(options, 'key'),
  };
}

function describe(record: InspectedRecord): Record<string, unknown> {
  const { response } = record;
  return {
    ref: recordRef(record),
    scope: record.scope,
    method: record.method,
    route: record.route,
    key: record.key,
    status: record.expired ? 'expired' : record.status,
    owner: record.ownerToken,
    ageMs: record.ageMs,
    leaseLeftMs: record.leaseLeftMs,
    leaseLapsed: record.leaseLapsed,
    createdAt: record.createdAt.toISOString(),
    completedAt: record.completedAt?.toISOString() ?? null,
    expiresAt: record.expiresAt.toISOString(),
    fingerprint: record.fingerprint,
    response:
      response === null
        ? null
        : 'sealed' in response
          ? { sealed: response.sealed, kid: response.kid }
          : { status: response.status, kind: response.kind },
  };
}

function lease(record: InspectedRecord): string {
  if (record.leaseLeftMs === null) return '-';
  return record.leaseLeftMs > 0
    ? `${duration(record.leaseLeftMs)} left`
    : `lapsed ${duration(-record.leaseLeftMs)} ago`;
}

/**
 * Whether the record's fingerprint is that of the given request: computed as the library
 * computes it (body, then path parameters, then query; a JSON body parsed), under the
 * secret the application uses (`idempotency_settings`, unless `--fingerprint-secret`).
 */
async function fingerprintMatch(db: Queryable, options: Options, stored: string): Promise<string | undefined> {
  const bodyFile = text(options, 'body-file');
  if (text(options, 'body') === undefined && bodyFile === undefined) return undefined;
  const body: unknown = bodyFile === undefined ? json(options, 'body') : JSON.parse(readFileSync(bodyFile, 'utf8'));
  const params = json(options, 'params');
  const parts: FingerprintParts = {
    body,
    params: params && Object.keys(params).length ? params : undefined,
    // Express and Fastify both hand a request without a query string an empty object.
    query: options['no-query'] ? undefined : (json(options, 'query') ?? {}),
  };
  const secret = text(options, 'fingerprint-secret') ?? process.env.IDEMPOTENCY_FINGERPRINT_SECRET;
  const key = secret ?? (await storedSecret(db));
  if (!key) return 'unknown (no fingerprint secret in idempotency_settings; pass --fingerprint-secret)';
  const computed = new Fingerprinter(key).of(parts)[0];
  if (computed === stored) return 'match';
  return computed.split(':')[0] === stored.split(':')[0]
    ? 'differs (another request: a retry with this body would get 422)'
    : 'unknown (recorded under another fingerprint secret)';
}

async function inspect({ db, options }: CommandContext): Promise<CommandResult> {
  const identity = identityOf(options);
  const record = await inspectRecord(db, identity);
  if (!record) {
    return {
      text: `no record for ${identity.method} ${identity.route} with this key and scope`,
      json: null,
      status: NOTHING,
    };
  }
  const shown = describe(record);
  const match = await fingerprintMatch(db, options, record.fingerprint);
  const response = shown.response as { status?: number; kind?: string; sealed?: string; kid?: string } | null;
  const lines: Array<[string, string]> = [
    ['record', String(shown.ref)],
    [
      'identity',
      `${record.method} ${record.route}, scope ${JSON.stringify(record.scope)}, key ${JSON.stringify(record.key)}`,
    ],
    ['status', String(shown.status)],
    ['owner', record.ownerToken ?? '-'],
    ['lease', lease(record)],
    ['age', duration(record.ageMs)],
    ['expires', record.expiresAt.toISOString()],
    [
      'response',
      response === null
        ? '-'
        : response.sealed
          ? `sealed (key ${response.kid})`
          : `${response.status} (${response.kind})`,
    ],
  ];
  if (match !== undefined) lines.push(['fingerprint', match]);
  return { text: fields(lines), json: { ...shown, fingerprintMatch: match ?? null }, status: 0 };
}

async function list({ db, options }: CommandContext): Promise<CommandResult> {
  const olderThanMs = text(options, 'older-than') === undefined ? 0 : parseDuration(text(options, 'older-than')!);
  const records = await listInProgress(db, { olderThanMs, limit: integer(options, 'limit', 100) });
  const rows = records.map((record) => [
    recordRef(record),
    duration(record.ageMs),
    lease(record),
    `${record.method} ${record.route}`,
    record.scope,
    record.key,
  ]);
  return {
    text: records.length
      ? table(['RECORD', 'AGE', 'LEASE', 'ROUTE', 'SCOPE', 'KEY'], rows)
      : `no in-progress record older than ${duration(olderThanMs)}`,
    json: records.map(describe),
    status: 0,
  };
}

async function release({ db, options }: CommandContext): Promise<CommandResult> {
  const identity = identityOf(options);
  const released = (await releaseRecord(db, identity)) !== null;
  const ref = recordRef(identity);
  return {
    text: released
      ? `released record ${ref} (${identity.method} ${identity.route}): the next request with this key runs`
      : `nothing released: no in-progress record ${ref} (${identity.method} ${identity.route})`,
    json: { record: ref, released },
    status: released ? 0 : NOTHING,
  };
}

async function remove({ db, options }: CommandContext): Promise<CommandResult> {
  const identity = identityOf(options);
  const was = await deleteRecord(db, identity);
  const ref = recordRef(identity);
  return {
    text: was
      ? `deleted record ${ref} (${identity.method} ${identity.route}, was ${was})`
      : `nothing deleted: no record ${ref} (${identity.method} ${identity.route})`,
    json: { record: ref, deleted: was !== null, was },
    status: was ? 0 : NOTHING,
  };
}

async function purge({ db, options, progress }: CommandContext): Promise<CommandResult> {
  const expired = await expiredSummary(db);
  const oldest = expired.oldestExpiry?.toISOString() ?? null;
  if (options['dry-run']) {
    return {
      text: `would purge ${expired.count} expired records` + (oldest ? ` (oldest expired at ${oldest})` : ''),
      json: { dryRun: true, expired: expired.count, oldestExpiry: oldest },
      status: 0,
    };
  }
  const deleted = await purgeWithProgress(
    db,
    {
      batchSize: integer(options, 'batch-size', 1000),
      maxBatches: text(options, 'max-batches') === undefined ? undefined : integer(options, 'max-batches', 1),
      pauseMs: integer(options, 'pause-ms', 10),
    },
    (total) => progress(`purged ${total} of ${expired.count} expired records`, false),
  );
  progress(`purged ${deleted} of ${expired.count} expired records`, true);
  return { text: `purged ${deleted} expired records`, json: { dryRun: false, deleted }, status: 0 };
}

async function stats({ db }: CommandContext): Promise<CommandResult> {
  const result = await storeStats(db);
  const rows = result.groups.map((group) => [
    group.status,
    `${group.method} ${group.route}`,
    String(group.count),
    group.status === 'in_progress' ? String(group.leaseLapsed) : '-',
    group.oldest.toISOString(),
  ]);
  const summary = fields([
    ['live records', String(result.groups.reduce((sum, group) => sum + group.count, 0))],
    ['oldest record', result.oldest?.toISOString() ?? '-'],
    ['expired, not purged', String(result.expired.count)],
    ['table size', bytes(result.tableBytes)],
  ]);
  return {
    text: (rows.length ? table(['STATUS', 'ROUTE', 'COUNT', 'LEASE LAPSED', 'OLDEST'], rows) + '\n\n' : '') + summary,
    json: {
      groups: result.groups.map((group) => ({ ...group, oldest: group.oldest.toISOString() })),
      oldest: result.oldest?.toISOString() ?? null,
      expired: result.expired.count,
      oldestExpiry: result.expired.oldestExpiry?.toISOString() ?? null,
      tableBytes: result.tableBytes,
    },
    status: 0,
  };
}

export const COMMANDS: Record<string, (context: CommandContext) => Promise<CommandResult>> = {
  inspect,
  list,
  release,
  delete: remove,
  purge,
  stats,
  migrate,
};
