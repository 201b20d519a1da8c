import { InvalidIdempotencyKeyError } from '../errors.js';

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
  if (!value.startsWith('"') && value.includes(',')) {
    // Read as a structured field, a bare `a, b` is a list, not one key (and Node joins repeated lines so).
    throw new InvalidIdempotencyKeyError(
      headerName,
      'the value must be one key, not a list; quote a key that contains a comma',
    );
  }
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
 * Route pattern of a handler from Nest's own metadata (adapter-agnostic, and the same
 * for every request of the route): controller path(s) joined with method path(s).
 */
export function routePattern(controllerPath: unknown, handlerPath: unknown): string {
  const paths = (value: unknown): string[] =>
    Array.isArray(value) ? value.map((path) => `${path as string}`) : [typeof value === 'string' ? value : ''];
  const patterns: string[] = [];
  for (const outer of paths(controllerPath)) {
    for (const inner of paths(handlerPath)) {
      patterns.push(('/' + [outer, inner].join('/')).replace(/\/+/g, '/').replace(/(.)\/$/, '$1'));
    }
  }
  return patterns.join('|');
}
