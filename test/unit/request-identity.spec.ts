import { describe, expect, it } from '@jest/globals';
import { InvalidIdempotencyKeyError, MissingIdempotencyKeyError } from '../../lib/errors.js';
import {
  canonicalJson,
  fingerprintOf,
  parseIdempotencyKey,
  requireKey,
  routePattern,
} from '../../lib/request-identity.js';

const HEADER = 'Idempotency-Key';
const parse = (raw: string | string[] | undefined, maxLength = 255) => parseIdempotencyKey(raw, HEADER, maxLength);

function thrown(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  throw new Error('expected an error');
}

/** The detail of the InvalidIdempotencyKeyError thrown for `raw`, so each case shows which rule refused it. */
function rejection(raw: string | string[], maxLength = 255): string {
  const error = thrown(() => parse(raw, maxLength));
  expect(error).toBeInstanceOf(InvalidIdempotencyKeyError);
  return (error as InvalidIdempotencyKeyError).getProblem().detail!;
}

describe('parseIdempotencyKey', () => {
  it('returns undefined when the header is absent', () => {
    expect(parse(undefined)).toBeUndefined();
  });

  it('accepts the bare form and trims surrounding whitespace', () => {
    expect(parse('8e03978e-40d5-43e8-bc93-6894a57f9324')).toBe('8e03978e-40d5-43e8-bc93-6894a57f9324');
    expect(parse('  abc \t')).toBe('abc');
  });

  it('unquotes the structured-field string form, with \\" and \\\\ escapes', () => {
    expect(parse('"abc"')).toBe('abc');
    expect(parse('  "abc"  ')).toBe('abc');
    expect(parse('"a\\"b"')).toBe('a"b');
    expect(parse('"a\\\\b"')).toBe('a\\b');
    expect(parse('" spaced key "')).toBe(' spaced key ');
  });

  it('rejects malformed quoted keys', () => {
    expect(rejection('"abc')).toMatch(/no closing quote/);
    expect(rejection('"abc"def')).toMatch(/after the closing quote/);
    expect(rejection('"a\\nb"')).toMatch(/may only escape/);
    expect(rejection('"abc\\')).toMatch(/may only escape/);
  });

  it('rejects an empty key, bare or quoted', () => {
    expect(rejection('')).toMatch(/empty/);
    expect(rejection('   ')).toMatch(/empty/);
    expect(rejection('""')).toMatch(/empty/);
  });

  it('counts the maximum length on the unquoted key', () => {
    const key = 'k'.repeat(10);
    expect(parse(key, 10)).toBe(key);
    expect(parse(`"${key}"`, 10)).toBe(key);
    expect(parse('"' + 'k'.repeat(8) + '\\""', 9)).toBe('k'.repeat(8) + '"');
    expect(rejection(key + 'k', 10)).toMatch(/longer than 10 characters/);
    expect(rejection(`"${key}k"`, 10)).toMatch(/longer than 10/);
  });

  it.each([
    ['a tab', 'a\tb'],
    ['DEL', 'a\x7fb'],
    ['a NUL', 'a\0b'],
    ['non-ASCII', 'clé'],
    ['non-ASCII inside quotes', '"clé"'],
  ])('rejects %s', (_, raw) => {
    expect(rejection(raw)).toMatch(/printable ASCII/);
  });

  it('names the header in the error detail', () => {
    expect(rejection('')).toBe(`${HEADER}: the key is empty`);
  });

  it('takes a header sent once as an array, and refuses one sent several times or not at all', () => {
    expect(parse(['"abc"'])).toBe('abc');
    expect(rejection(['a', 'b'])).toMatch(/sent once/);
    expect(rejection([])).toMatch(/sent once/);
  });
});

describe('requireKey', () => {
  it('passes a key through and throws MissingIdempotencyKeyError (400) without one', () => {
    expect(requireKey('abc', HEADER)).toBe('abc');
    const error = thrown(() => requireKey(undefined, 'X-Request-Key'));
    expect(error).toBeInstanceOf(MissingIdempotencyKeyError);
    expect((error as MissingIdempotencyKeyError).getStatus()).toBe(400);
    expect((error as MissingIdempotencyKeyError).getProblem().detail).toContain('X-Request-Key');
  });
});

describe('canonicalJson', () => {
  it('sorts object keys at every depth and keeps array order', () => {
    const a = { b: 1, a: { d: [3, 1, { z: 1, y: 2 }], c: null } };
    const b = { a: { c: null, d: [3, 1, { y: 2, z: 1 }] }, b: 1 };
    expect(canonicalJson(a)).toBe('{"a":{"c":null,"d":[3,1,{"y":2,"z":1}]},"b":1}');
    expect(canonicalJson(b)).toBe(canonicalJson(a));
    expect(canonicalJson([1, 2])).not.toBe(canonicalJson([2, 1]));
  });

  it('uses toJSON (Date) and sorts the keys of what toJSON returns', () => {
    const date = new Date('2024-05-06T07:08:09.010Z');
    expect(canonicalJson({ at: date })).toBe('{"at":"2024-05-06T07:08:09.010Z"}');
    expect(canonicalJson({ toJSON: () => ({ y: 1, x: 2 }) })).toBe('{"x":2,"y":1}');
  });

  it('drops what JSON cannot hold, as JSON.stringify does', () => {
    expect(canonicalJson({ a: undefined, b: () => 1, c: [undefined] })).toBe('{"c":[null]}');
    expect(canonicalJson(undefined)).toBe('null');
  });
});

describe('fingerprintOf', () => {
  it('is a SHA-256 hex digest that ignores key order', () => {
    const fingerprint = fingerprintOf({ body: { amount: 10, currency: 'EUR' } });
    expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(fingerprintOf({ body: { currency: 'EUR', amount: 10 } })).toBe(fingerprint);
    expect(fingerprintOf({ body: { amount: 11, currency: 'EUR' } })).not.toBe(fingerprint);
  });

  it('ignores key order in the query and the headers too', () => {
    expect(fingerprintOf({ body: null, query: { a: '1', b: '2' }, headers: { 'x-a': '1', 'x-b': '2' } })).toBe(
      fingerprintOf({ body: null, query: { b: '2', a: '1' }, headers: { 'x-b': '2', 'x-a': '1' } }),
    );
  });

  it('keeps the body, the query and the headers apart', () => {
    const same = { a: '1' };
    const prints = [
      fingerprintOf({ body: same }),
      fingerprintOf({ body: null, query: same }),
      fingerprintOf({ body: null, headers: same }),
      fingerprintOf({ body: same, query: {} }),
      fingerprintOf({ body: null, query: {}, headers: same }),
      fingerprintOf({ body: null, query: same, headers: {} }),
    ];
    expect(new Set(prints).size).toBe(prints.length);
  });

  it('tells Buffer, string and JSON bodies apart even when their text is the same', () => {
    const prints = [
      fingerprintOf({ body: Buffer.from('"x"') }),
      fingerprintOf({ body: '"x"' }),
      fingerprintOf({ body: 'x' }),
    ];
    expect(new Set(prints).size).toBe(3);
    expect(fingerprintOf({ body: Buffer.from([1, 2]) })).not.toBe(fingerprintOf({ body: Buffer.from([2, 1]) }));
  });

  it('treats an absent body as null', () => {
    expect(fingerprintOf({ body: undefined })).toBe(fingerprintOf({ body: null }));
  });

  // JSON.parse (hence Express's body parser) produces own "__proto__" members; assigning
  // one to a plain object would set its prototype instead, and the member would vanish
  // from the fingerprint, so a reused key with such a payload would be replayed, not 422.
  it('keeps a "__proto__" member of a parsed body in the fingerprint', () => {
    const body = JSON.parse('{"__proto__":{"amount":1000},"to":"bob"}');
    expect(canonicalJson(body)).toBe('{"__proto__":{"amount":1000},"to":"bob"}');
    expect(fingerprintOf({ body })).not.toBe(fingerprintOf({ body: { to: 'bob' } }));
  });
});

describe('routePattern', () => {
  it('joins controller and handler paths with exactly one slash, without a trailing one', () => {
    expect(routePattern('payments', ':id')).toBe('/payments/:id');
    expect(routePattern('/payments/', '/:id/')).toBe('/payments/:id');
    expect(routePattern('//api//payments', 'refunds//')).toBe('/api/payments/refunds');
  });

  it('gives "/" for empty, root and missing paths', () => {
    expect(routePattern('', '')).toBe('/');
    expect(routePattern('/', '/')).toBe('/');
    expect(routePattern(undefined, undefined)).toBe('/');
    expect(routePattern('payments', '')).toBe('/payments');
    expect(routePattern('', 'payments')).toBe('/payments');
  });

  it('lists every combination of several controller and handler paths', () => {
    expect(routePattern(['a', 'b'], ['x', '/y/'])).toBe('/a/x|/a/y|/b/x|/b/y');
    expect(routePattern('payments', ['', 'new'])).toBe('/payments|/payments/new');
  });
});
