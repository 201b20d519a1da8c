import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import pg from 'pg';
import { inline, literal } from '../../lib/storage/postgres/literals.js';

/*
 * The values of a transactional claim and completion travel as SQL literals (one simple
 * query each). Whatever a client sends as a key or a body must read back from PostgreSQL
 * exactly as it was, under either setting of standard_conforming_strings.
 */
const NASTY = [
  '',
  "O'Reilly",
  "''",
  '\\',
  'trailing\\',
  "\\'; DROP TABLE idempotency_keys; --",
  '$1 $$ $tag$ E\'x\' U&"d"',
  '{"a":"\\"quoted\\" \\\\ \\u00e9"}',
  'line\nbreak\ttab\r',
  'ünï ✓ 🙂',
];

let client: pg.Client;

beforeAll(async () => {
  client = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
});

afterAll(async () => {
  await client?.end();
});

describe('SQL literals', () => {
  for (const setting of ['on', 'off']) {
    it(`read back exactly with standard_conforming_strings = ${setting}`, async () => {
      await client.query(`SET standard_conforming_strings = ${setting}`);
      try {
        for (const text of NASTY) {
          const { rows } = await client.query<{ v: string }>(`SELECT ${literal(text)}::text AS v`);
          expect(rows[0].v).toBe(text);
        }
      } finally {
        await client.query('RESET standard_conforming_strings');
      }
    });
  }

  it('inline() fills every placeholder, two-digit ones included, and keeps numbers numbers', async () => {
    const values = [...NASTY.slice(0, 9), 12.5, -3];
    const sql = inline(
      `SELECT ARRAY[${NASTY.slice(0, 9)
        .map((_, i) => `$${i + 1}::text`)
        .join(', ')}] AS texts, $10 + $11 AS sum`,
      values,
    );
    const { rows } = await client.query(sql);
    expect(rows[0]).toEqual({ texts: NASTY.slice(0, 9), sum: '9.5' });
  });

  it('refuses what PostgreSQL text cannot hold or SQL cannot spell, rather than send a truncated query', () => {
    expect(() => literal('before\0after')).toThrow(RangeError);
    expect(() => literal(Number.NaN)).toThrow(RangeError);
    expect(() => literal(Infinity)).toThrow(RangeError);
    expect(() => literal({})).toThrow(TypeError);
    expect(() => inline('SELECT $2', ['one'])).toThrow(RangeError);
  });
});
