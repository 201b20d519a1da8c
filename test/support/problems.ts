import { expect } from '@jest/globals';
import type { IncomingHttpHeaders } from 'node:http';
import { PROBLEM_TYPE_BASE } from '../../lib/index.js';

interface AnyResult {
  status: number;
  headers: Headers | IncomingHttpHeaders;
  json: any;
}

/** A response header from fetch's Headers or from node:http's header object. */
export function headerOf(result: AnyResult, name: string): string | undefined {
  const { headers } = result;
  if (headers instanceof Headers) return headers.get(name) ?? undefined;
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** The response is the library's problem document of this type (RFC 9457). */
export function expectProblem(result: AnyResult, status: number, slug: string): void {
  expect({ status: result.status, json: result.json }).toMatchObject({
    status,
    json: { type: PROBLEM_TYPE_BASE + slug, status },
  });
  expect(headerOf(result, 'content-type')).toMatch(/^application\/problem\+json/);
}
