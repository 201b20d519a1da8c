import { describe, expect, it } from '@jest/globals';
import { InvalidIdempotencyKeyError } from '../../lib/errors.js';
import { parseIdempotencyKey, routePattern } from '../../lib/http/request-identity.js';

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

  // Node joins repeated header lines into "a, b"; the draft's value is one string, not a list.
  it('refuses a list in the bare form, and accepts a comma only inside the quoted form', () => {
    expect(rejection('a, b')).toMatch(/not a list/);
    expect(rejection('abc,')).toMatch(/not a list/);
    expect(rejection('"a", "b"')).toMatch(/after the closing quote/);
    expect(parse('"a,b"')).toBe('a,b');
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
