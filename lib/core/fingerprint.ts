import { createHash, createHmac } from 'node:crypto';

/**
 * The request fingerprint: a keyed MAC (HMAC-SHA-256) of the canonical payload, so that
 * what a request carried (a card number, a password, an e-mail address) cannot be
 * recovered from the `idempotency_keys` table by hashing guesses, as it could from a
 * bare hash. Stored as `<secret id>:<mac>`; the secret id lets a rotated secret still
 * recognise the records written under the previous one.
 */

export interface FingerprintParts {
  body: unknown;
  /** Path parameters: the same key on `/orders/1/refund` and `/orders/2/refund` is not the same request. */
  params?: unknown;
  /** Host parameters of host-routed controllers (`@Controller({ host: ':account.example.com' })`). */
  hosts?: unknown;
  query?: unknown;
  headers?: Record<string, string | string[] | undefined>;
}

/** A secret given as text is used as its UTF-8 bytes. */
export type FingerprintSecret = string | Buffer;

/** The MAC secret in use, with the ones that came before it (still accepted for matching). */
export class Fingerprinter {
  private readonly keys: ReadonlyArray<{ id: string; secret: Buffer }>;

  constructor(current: FingerprintSecret, previous: readonly FingerprintSecret[] = []) {
    this.keys = [current, ...previous].map((secret) => {
      const bytes = Buffer.isBuffer(secret) ? secret : Buffer.from(secret, 'utf8');
      // The id names the secret without revealing it: a hash of a (long, random) secret.
      return {
        id: createHash('sha256').update('fingerprint-secret-id:').update(bytes).digest('hex').slice(0, 8),
        secret: bytes,
      };
    });
  }

  /**
   * The fingerprint of a request under the current secret, followed by those under the
   * previous secrets: a stored fingerprint equal to any of them is the same request.
   */
  of(parts: FingerprintParts): string[] {
    const macs = this.keys.map(({ secret }) => createHmac('sha256', secret));
    writeParts(parts, (chunk) => {
      for (const mac of macs) mac.update(chunk);
    });
    return macs.map((mac, index) => `${this.keys[index].id}:${mac.digest('hex')}`);
  }
}

/** One fingerprint of a request, under one secret. */
export function fingerprintOf(parts: FingerprintParts, secret: FingerprintSecret): string {
  return new Fingerprinter(secret).of(parts)[0];
}

/**
 * Each part is written as `<tag><byte length>:<content>`, so that no content can imitate
 * the next part: a text body ending in what looks like a path-parameter section must not
 * fingerprint like a shorter body plus those parameters.
 */
function writeParts(parts: FingerprintParts, write: (chunk: string | Buffer) => void): void {
  const section = (tag: string, content: string | Buffer) => {
    write(`${tag}${Buffer.byteLength(content)}:`);
    write(content);
  };
  const { body } = parts;
  // Bodies that arrive as bytes or text (non-JSON content types) are taken as they are.
  if (Buffer.isBuffer(body)) section('b', body);
  else if (typeof body === 'string') section('s', body);
  else section('j', canonicalJson(body ?? null));
  const sections = [
    ['p', parts.params],
    ['o', parts.hosts],
    ['q', parts.query],
    ['h', parts.headers],
  ] as const;
  for (const [tag, value] of sections) if (value !== undefined) section(tag, canonicalJson(value));
}

/**
 * JSON with object keys sorted at every depth, so that `{"a":1,"b":2}` and
 * `{"b":2,"a":1}` are the same payload. Arrays keep their order; values JSON cannot hold
 * are dropped (in objects) or written as null (in arrays), as `JSON.stringify` does.
 * Numbers that `JSON.stringify` would conflate but a handler can tell apart are written
 * apart: `-0`, and `Infinity`, `-Infinity`, `NaN` (a body's `1e400` parses as `Infinity`,
 * which must not fingerprint like `null`). The text is then not JSON, but it is only hashed.
 *
 * A Map or a Set is refused rather than written as `{}` (a payload of `run()` or
 * `@IdempotentMethod()` may be one; a parsed body never is).
 *
 * Iterative, not recursive: the depth of a request body is the client's to choose, and a
 * body nested tens of thousands of levels deep must not overflow the stack.
 */
export function canonicalJson(root: unknown): string {
  interface Frame {
    readonly holder: object;
    readonly keys: readonly string[] | null; // null for arrays
    readonly length: number;
    index: number;
    wrote: boolean;
  }
  const stack: Frame[] = [];
  const open = new Set<object>();
  let out = '';

  /** Writes a value already passed through `toJsonValue`: a primitive, or the opening of an object or array. */
  const emit = (value: unknown): void => {
    if (value === null) out += 'null';
    else if (typeof value === 'number')
      out += Object.is(value, -0) ? '-0' : Number.isFinite(value) ? JSON.stringify(value) : String(value);
    else if (typeof value === 'string' || typeof value === 'boolean') out += JSON.stringify(value);
    else if (typeof value === 'bigint') throw new TypeError('Do not know how to serialize a BigInt');
    else {
      const holder = value as object;
      if (holder instanceof Map || holder instanceof Set) {
        // JSON writes {} whatever it holds: payloads that differ would compare equal.
        throw new TypeError(
          'A Map or Set has no JSON form (JSON.stringify writes {} whatever it holds), so payloads that ' +
            'differ would compare equal: convert it first (Object.fromEntries(map), [...set]).',
        );
      }
      if (open.has(holder)) throw new TypeError('Converting circular structure to JSON');
      open.add(holder);
      const keys = Array.isArray(holder) ? null : Object.keys(holder).sort();
      out += keys ? '{' : '[';
      stack.push({ holder, keys, length: keys ? keys.length : (holder as unknown[]).length, index: 0, wrote: false });
    }
  };

  const top = toJsonValue(root, '');
  if (omitted(top)) return 'null';
  emit(top);
  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.index === frame.length) {
      out += frame.keys ? '}' : ']';
      open.delete(frame.holder);
      stack.pop();
      continue;
    }
    const index = frame.index++;
    if (frame.keys === null) {
      if (index > 0) out += ',';
      const value = toJsonValue((frame.holder as unknown[])[index], String(index));
      if (omitted(value)) out += 'null';
      else emit(value);
    } else {
      const key = frame.keys[index];
      const value = toJsonValue((frame.holder as Record<string, unknown>)[key], key);
      if (omitted(value)) continue;
      out += (frame.wrote ? ',' : '') + JSON.stringify(key) + ':';
      frame.wrote = true;
      emit(value);
    }
  }
  return out;
}

/** What `JSON.stringify` writes for a value: `toJSON()` applied once, boxed primitives unboxed. */
function toJsonValue(value: unknown, key: string): unknown {
  if (value !== null && (typeof value === 'object' || typeof value === 'bigint')) {
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') value = toJSON.call(value, key);
  }
  if (value instanceof Number || value instanceof String || value instanceof Boolean) return value.valueOf();
  return value;
}

/** Values JSON has no form for: left out of objects, null in arrays. */
function omitted(value: unknown): boolean {
  return value === undefined || typeof value === 'function' || typeof value === 'symbol';
}
