import { createHash } from 'node:crypto';
import { InvalidIdempotencyKeyError, MissingIdempotencyKeyError } from './errors.js';

/**
 * Reads the idempotency key from a header value. Accepts both the IETF draft's form, a
 * structured-field string (`"abc"`, RFC 8941 §3.3.3, with `\"` and `\\` escapes), and
 * the bare form most clients send (`abc`). The key is 1 to `maxLength` printable ASCII
 * characters once unquoted.
 *
 * Returns undefined when the header is absent; throws when it is present but malformed.
 */
export function parseIdempotencyKey(
  raw: string | string[] | undefined,
  headerName: string,
  maxLength: number,
): string | undefined {
  if (raw === undefined) return undefined;
  if (Array.isArray(raw)) {
    // Two header lines would make the key ambiguous.
    if (raw.length !== 1) throw new InvalidIdempotencyKeyError(headerName, 'the header must be sent once');
    raw = raw[0];
  }
  const value = raw.trim();
  const key = value.startsWith('"') ? parseStructuredString(value, headerName) : value;
  if (key.length === 0) throw new InvalidIdempotencyKeyError(headerName, 'the key is empty');
  if (key.length > maxLength) {
    throw new InvalidIdempotencyKeyError(headerName, `the key is longer than ${maxLength} characters`);
  }
  if (!/^[\x20-\x7e]+$/.test(key)) {
    throw new InvalidIdempotencyKeyError(headerName, 'the key must consist of printable ASCII characters');
  }
  return key;
}

/** Throws the missing-key error: kept here so that all key rules live in one file. */
export function requireKey(key: string | undefined, headerName: string): string {
  if (key === undefined) throw new MissingIdempotencyKeyError(headerName);
  return key;
}

function parseStructuredString(value: string, headerName: string): string {
  let key = '';
  for (let i = 1; i < value.length; i++) {
    const char = value[i];
    if (char === '\\') {
      const next = value[++i];
      if (next !== '"' && next !== '\\') {
        throw new InvalidIdempotencyKeyError(headerName, 'a quoted key may only escape " and \\');
      }
      key += next;
    } else if (char === '"') {
      if (i !== value.length - 1) {
        throw new InvalidIdempotencyKeyError(headerName, 'unexpected characters after the closing quote');
      }
      return key;
    } else {
      key += char;
    }
  }
  throw new InvalidIdempotencyKeyError(headerName, 'the quoted key has no closing quote');
}

/**
 * JSON with object keys sorted at every depth, so that `{"a":1,"b":2}` and
 * `{"b":2,"a":1}` are the same payload. Arrays keep their order; values JSON cannot
 * hold are dropped as JSON.stringify drops them.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value)) ?? 'null';
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    if (typeof (value as { toJSON?: unknown }).toJSON === 'function') {
      return sortKeys((value as { toJSON(): unknown }).toJSON());
    }
    // No prototype: a "__proto__" member of a parsed body stays an ordinary member.
    const sorted: Record<string, unknown> = Object.create(null);
    for (const key of Object.keys(value).sort()) sorted[key] = sortKeys((value as Record<string, unknown>)[key]);
    return sorted;
  }
  return value;
}

export interface FingerprintParts {
  body: unknown;
  /** Path parameters: the same key on `/orders/1/refund` and `/orders/2/refund` is not the same request. */
  params?: unknown;
  query?: unknown;
  headers?: Record<string, string | string[] | undefined>;
}

/**
 * SHA-256 of the canonical request payload. Bodies that arrive as bytes or text
 * (non-JSON content types) are hashed as they are.
 */
export function fingerprintOf(parts: FingerprintParts): string {
  const hash = createHash('sha256');
  const { body } = parts;
  if (Buffer.isBuffer(body)) hash.update('b:').update(body);
  else if (typeof body === 'string') hash.update('s:').update(body);
  else hash.update('j:').update(canonicalJson(body ?? null));
  if (parts.params !== undefined) hash.update('\0p:').update(canonicalJson(parts.params));
  if (parts.query !== undefined) hash.update('\0q:').update(canonicalJson(parts.query));
  if (parts.headers !== undefined) hash.update('\0h:').update(canonicalJson(parts.headers));
  return hash.digest('hex');
}

/**
 * Route pattern of a handler from Nest's own metadata (adapter-agnostic, and the same
 * for every request of the route): controller path(s) joined with method path(s).
 */
export function routePattern(controllerPath: unknown, handlerPath: unknown): string {
  const paths = (value: unknown): string[] => (Array.isArray(value) ? value.map(String) : [String(value ?? '')]);
  const patterns: string[] = [];
  for (const outer of paths(controllerPath)) {
    for (const inner of paths(handlerPath)) {
      patterns.push(('/' + [outer, inner].join('/')).replace(/\/+/g, '/').replace(/(.)\/$/, '$1'));
    }
  }
  return patterns.join('|');
}
