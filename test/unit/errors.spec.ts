import { describe, expect, it } from '@jest/globals';
import { HttpException } from '@nestjs/common';
import {
  IdempotencyError,
  IdempotencyKeyReuseError,
  IdempotencyStoreUnavailableError,
  InvalidIdempotencyKeyError,
  MissingIdempotencyKeyError,
  PROBLEM_TYPE_BASE,
  RequestInProgressError,
  ResponseNotReplayableError,
} from '../../lib/errors.js';

describe('errors', () => {
  it('keeps the problem type base stable', () => {
    expect(PROBLEM_TYPE_BASE).toBe('urn:nestjs-idempotency:problem:');
  });

  // Clients branch on these values: changing one is a breaking change.
  const cases: Array<[string, () => IdempotencyError, string, number, string, Record<string, string>]> = [
    [
      'MissingIdempotencyKeyError',
      () => new MissingIdempotencyKeyError('Idempotency-Key'),
      'missing-key',
      400,
      'Idempotency key missing',
      {},
    ],
    [
      'InvalidIdempotencyKeyError',
      () => new InvalidIdempotencyKeyError('Idempotency-Key', 'too long'),
      'invalid-key',
      400,
      'Idempotency key invalid',
      {},
    ],
    [
      'IdempotencyKeyReuseError',
      () => new IdempotencyKeyReuseError(),
      'key-reused',
      422,
      'Idempotency key reused with a different payload',
      {},
    ],
    [
      'RequestInProgressError',
      () => new RequestInProgressError(3),
      'request-in-progress',
      409,
      'A request with this idempotency key is in progress',
      { 'Retry-After': '3' },
    ],
    [
      'IdempotencyStoreUnavailableError',
      () => new IdempotencyStoreUnavailableError(5),
      'store-unavailable',
      503,
      'Idempotency store unavailable',
      { 'Retry-After': '5' },
    ],
    [
      'ResponseNotReplayableError',
      () => new ResponseNotReplayableError('it was too large'),
      'response-not-replayable',
      410,
      'Original response cannot be replayed',
      {},
    ],
  ];

  it.each(cases)('%s has a stable type, status, title and headers', (_, make, slug, status, title, headers) => {
    const error = make();
    expect(error).toBeInstanceOf(IdempotencyError);
    expect(error).toBeInstanceOf(HttpException);
    expect(error.getStatus()).toBe(status);
    expect(error.headers).toEqual(headers);
    const problem = error.getProblem();
    expect(problem).toEqual({ type: PROBLEM_TYPE_BASE + slug, title, status, detail: expect.any(String) });
    // The body itself is the problem document, for filters that render getResponse().
    expect(error.getResponse()).toBe(problem);
  });

  it('gives every class its own problem type', () => {
    const types = cases.map(([, make]) => make().getProblem().type);
    expect(new Set(types).size).toBe(cases.length);
  });

  it('puts the header name and the reason in the detail', () => {
    expect(new MissingIdempotencyKeyError('X-Request-Key').getProblem().detail).toBe(
      'This operation is idempotent and requires an X-Request-Key header.',
    );
    expect(new InvalidIdempotencyKeyError('X-Request-Key', 'the key is empty').getProblem().detail).toBe(
      'X-Request-Key: the key is empty',
    );
    expect(new ResponseNotReplayableError('the file is larger than 10 bytes').getProblem().detail).toMatch(
      /: the file is larger than 10 bytes\.$/,
    );
  });
});
