import { describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { canonicalJson, Fingerprinter, fingerprintOf, type FingerprintParts } from '../../lib/core/fingerprint.js';

const SECRET = 'a test secret of enough length';
const print = (parts: FingerprintParts) => fingerprintOf(parts, SECRET);

/** A value nested `depth` levels deep: {"a":{"a":...{"a":1}}} or [[...[1]]]. */
function nested(depth: number, kind: 'object' | 'array'): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = kind === 'object' ? { a: value } : [value];
  return value;
}

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
    expect(canonicalJson({ a: undefined, b: () => 1, c: [undefined, Symbol('s')], d: null })).toBe(
      '{"c":[null,null],"d":null}',
    );
    expect(canonicalJson(undefined)).toBe('null');
    expect(canonicalJson({ x: undefined })).toBe('{}');
  });

  it('writes exactly what JSON.stringify writes for values without key-order differences', () => {
    const values = [
      { a: 'Grüße\n"quoted"\u2028', b: [1.5, 1e21, 1e-7, true, false, null], c: {} },
      [[], {}, '', 0],
      'plain',
      42,
      { n: new Number(3), s: new String('x'), t: new Boolean(true) },
    ];
    for (const value of values) expect(canonicalJson(value)).toBe(JSON.stringify(value));
  });

  // The client chooses the depth of its body; a recursive walk would overflow the stack (a 500).
  it.each(['object', 'array'] as const)('handles an %s nested 100,000 levels deep', (kind) => {
    const value = nested(100_000, kind);
    const text = canonicalJson(value);
    expect(text.length).toBe(kind === 'object' ? 100_000 * 6 + 1 : 200_001);
    expect(() => JSON.stringify(value)).toThrow(RangeError);
  });

  // JSON.parse turns 1e400 into Infinity; JSON.stringify would write it (and NaN) as null, and -0 as 0.
  it('keeps apart the numbers JSON.stringify conflates', () => {
    const texts = [null, 0, -0, Infinity, -Infinity, NaN].map((a) => canonicalJson({ a }));
    expect(new Set(texts).size).toBe(6);
    expect(canonicalJson(JSON.parse('{"a":1e400}'))).toBe('{"a":Infinity}');
    expect(canonicalJson([-0])).toBe('[-0]');
  });

  it('refuses a cycle, as JSON.stringify does, instead of looping', () => {
    const cycle: Record<string, unknown> = { a: 1 };
    cycle.self = { back: cycle };
    expect(() => canonicalJson(cycle)).toThrow(/circular/);
    const shared = { x: 1 };
    expect(canonicalJson({ a: shared, b: shared })).toBe('{"a":{"x":1},"b":{"x":1}}');
  });

  // JSON.parse (hence Express's body parser) produces own "__proto__" members.
  it('refuses a Map or a Set, which JSON writes as {} whatever it holds', () => {
    // A payload of run() or @IdempotentMethod() is any value: two Maps with other contents
    // must not compare equal (a repeat with another payload would get the first one's result).
    expect(() => canonicalJson({ amount: new Map([['cents', 5]]) })).toThrow(/Map or Set/);
    expect(() => canonicalJson([new Set([1])])).toThrow(/Map or Set/);
    expect(() => canonicalJson(new Map())).toThrow(/Map or Set/);
  });

  it('keeps a "__proto__" member of a parsed body', () => {
    const body = JSON.parse('{"__proto__":{"amount":1000},"to":"bob"}');
    expect(canonicalJson(body)).toBe('{"__proto__":{"amount":1000},"to":"bob"}');
  });
});

describe('fingerprintOf', () => {
  it('is a keyed MAC tagged with the secret id, and ignores key order', () => {
    const fingerprint = print({ body: { amount: 10, currency: 'EUR' } });
    expect(fingerprint).toMatch(/^[0-9a-f]{8}:[0-9a-f]{64}$/);
    expect(print({ body: { currency: 'EUR', amount: 10 } })).toBe(fingerprint);
    expect(print({ body: { amount: 11, currency: 'EUR' } })).not.toBe(fingerprint);
  });

  // A bare hash of a small payload space (a card number, an amount) is reversed by trying them all.
  it('cannot be recomputed without the secret', () => {
    const body = { card: '4242424242424242' };
    const fingerprint = print({ body });
    const bareHash = createHash('sha256')
      .update('j:' + canonicalJson(body))
      .digest('hex');
    expect(fingerprint).not.toContain(bareHash);
    expect(fingerprintOf({ body }, 'another secret of enough length')).not.toBe(fingerprint);
    expect(fingerprintOf({ body }, 'another secret of enough length').split(':')[0]).not.toBe(
      fingerprint.split(':')[0],
    );
  });

  it('ignores key order in the query and the headers too', () => {
    expect(print({ body: null, query: { a: '1', b: '2' }, headers: { 'x-a': '1', 'x-b': '2' } })).toBe(
      print({ body: null, query: { b: '2', a: '1' }, headers: { 'x-b': '2', 'x-a': '1' } }),
    );
  });

  it('keeps the body, the path and host parameters, the query and the headers apart', () => {
    const same = { a: '1' };
    const prints = [
      print({ body: same }),
      print({ body: null, params: same }),
      print({ body: null, hosts: same }),
      print({ body: null, query: same }),
      print({ body: null, headers: same }),
      print({ body: same, query: {} }),
      print({ body: null, query: {}, headers: same }),
      print({ body: null, query: same, headers: {} }),
    ];
    expect(new Set(prints).size).toBe(prints.length);
  });

  it('tells Buffer, string and JSON bodies apart even when their text is the same', () => {
    const prints = [print({ body: Buffer.from('"x"') }), print({ body: '"x"' }), print({ body: 'x' })];
    expect(new Set(prints).size).toBe(3);
    expect(print({ body: Buffer.from([1, 2]) })).not.toBe(print({ body: Buffer.from([2, 1]) }));
  });

  // A text body can hold any bytes: it must not be able to imitate the sections after it.
  it('cannot be forged by a body that imitates the parameter sections', () => {
    expect(print({ body: 'x\0p:{"id":"5"}' })).not.toBe(print({ body: 'x', params: { id: '5' } }));
    expect(print({ body: Buffer.from('x\0p:{"id":"5"}') })).not.toBe(
      print({ body: Buffer.from('x'), params: { id: '5' } }),
    );
    expect(print({ body: 'x', query: { a: '1' } })).not.toBe(print({ body: 'x\0q:{"a":"1"}' }));
  });

  it('treats an absent body as null', () => {
    expect(print({ body: undefined })).toBe(print({ body: null }));
  });

  it('keeps a "__proto__" member of a parsed body in the fingerprint', () => {
    const body = JSON.parse('{"__proto__":{"amount":1000},"to":"bob"}');
    expect(print({ body })).not.toBe(print({ body: { to: 'bob' } }));
  });
});

describe('Fingerprinter', () => {
  it('gives the fingerprint under the current secret first, then under each previous one', () => {
    const parts = { body: { amount: 10 } };
    const rotated = new Fingerprinter('the new secret, long enough', ['the old secret, long enough']);
    const [current, previous] = rotated.of(parts);
    expect(current).toBe(fingerprintOf(parts, 'the new secret, long enough'));
    expect(previous).toBe(fingerprintOf(parts, 'the old secret, long enough'));
  });
});
