import { describe, expect, it } from '@jest/globals';
import { BadRequestException, HttpException, StreamableFile } from '@nestjs/common';
import { Readable } from 'node:stream';
import { ResponseNotReplayableError } from '../../lib/errors.js';
import type { StoredResponse } from '../../lib/core/record.js';
import { captureError, captureResult, replayValue } from '../../lib/core/stored-response.js';

const META = { status: 201, headers: { 'content-type': 'application/json', location: '/payments/1' } };
const LIMIT = 1024;

const capture = (result: unknown, maxBytes = LIMIT) => captureResult(result, META, maxBytes);

/** What the stored response looks like after a round trip through a JSONB column. */
const throughJsonb = (stored: StoredResponse): StoredResponse => JSON.parse(JSON.stringify(stored));

async function bytesOf(file: unknown): Promise<Buffer> {
  expect(file).toBeInstanceOf(StreamableFile);
  const chunks: Buffer[] = [];
  for await (const chunk of (file as StreamableFile).getStream()) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

function replayError(stored: StoredResponse): unknown {
  try {
    replayValue(stored);
  } catch (error) {
    return error;
  }
  throw new Error(`expected the replay of a '${stored.kind}' response to throw`);
}

describe('captureResult and replayValue', () => {
  it('keep the status and headers and hand back the original value', async () => {
    const body = { id: 1 };
    const { stored, result } = await capture(body);
    expect(result).toBe(body);
    expect(stored).toMatchObject({ status: 201, headers: META.headers, kind: 'json' });
  });

  it('replay JSON with its key order, nested objects and arrays', async () => {
    const original = { z: 1, a: { y: [3, 1, 2], b: null }, m: 'é', date: new Date(0), flag: false };
    const { stored } = await capture(original);
    expect(stored.body).toBe(JSON.stringify(original));
    expect(JSON.stringify(replayValue(throughJsonb(stored)))).toBe(JSON.stringify(original));
  });

  it.each([null, 0, 42.5, true, [], [{ b: 1, a: 2 }]])('replay the JSON value %j', async (original) => {
    const { stored } = await capture(original);
    expect(stored.kind).toBe('json');
    expect(replayValue(throughJsonb(stored))).toEqual(original);
  });

  it('store plain strings as utf8 text', async () => {
    const { stored } = await capture('héllo <b>');
    expect(stored).toMatchObject({ kind: 'text', body: 'héllo <b>', encoding: 'utf8' });
    expect(replayValue(throughJsonb(stored))).toBe('héllo <b>');
  });

  it('store a string with a NUL character as base64, and replay it unchanged', async () => {
    const original = 'before\0after';
    const { stored } = await capture(original);
    expect(stored).toMatchObject({ kind: 'text', encoding: 'base64' });
    expect(stored.body).not.toContain('\0');
    expect(replayValue(throughJsonb(stored))).toBe(original);
  });

  it('store a string with a lone surrogate as base64, and replay the same UTF-8 bytes', async () => {
    const original = 'a\uD800b';
    const { stored } = await capture(original);
    expect(stored).toMatchObject({ kind: 'text', encoding: 'base64' });
    // The wire carries UTF-8, where a lone surrogate is U+FFFD either way.
    expect(Buffer.from(replayValue(throughJsonb(stored)) as string)).toEqual(Buffer.from(original));
  });

  it.each([
    ['Buffer', Buffer.from([0, 1, 2, 255, 0])],
    ['Uint8Array', new Uint8Array([0, 1, 2, 255, 0])],
  ])('store a %s as binary and replay the same bytes as the same type', async (name, original) => {
    const { stored, result } = await capture(original);
    expect(result).toBe(original);
    expect(stored).toMatchObject({ kind: 'binary', encoding: 'base64' });
    const replayed = replayValue(throughJsonb(stored)) as Uint8Array;
    // The platform serialises the two differently (Express sends a plain Uint8Array as JSON).
    expect(Buffer.isBuffer(replayed)).toBe(name === 'Buffer');
    expect(Buffer.from(replayed)).toEqual(Buffer.from([0, 1, 2, 255, 0]));
  });

  it('store only the viewed bytes of a Uint8Array over a larger buffer', async () => {
    const view = new Uint8Array(new Uint8Array([9, 9, 1, 2, 9]).buffer, 2, 2);
    const { stored } = await capture(view);
    expect(Buffer.from(replayValue(throughJsonb(stored)) as Uint8Array)).toEqual(Buffer.from([1, 2]));
  });

  it('store undefined as an empty body', async () => {
    const { stored } = await capture(undefined);
    expect(stored).toEqual({ ...META, kind: 'empty' });
    expect(replayValue(throughJsonb(stored))).toBeUndefined();
  });

  describe('StreamableFile', () => {
    const bytes = Buffer.from('%PDF-1.7 not really a pdf \0\xff');
    const fileOptions = { type: 'application/pdf', disposition: 'attachment; filename="r.pdf"' };

    it.each([
      ['a Buffer', () => new StreamableFile(bytes, fileOptions)],
      [
        'a Readable stream',
        () => new StreamableFile(Readable.from([bytes.subarray(0, 5), bytes.subarray(5)]), fileOptions),
      ],
    ])('made from %s is stored as a file and handed on as a fresh readable one', async (_, make) => {
      const original = make();
      const { stored, result } = await capture(original);
      expect(stored).toMatchObject({
        kind: 'file',
        encoding: 'base64',
        file: { ...fileOptions, length: bytes.length },
      });
      expect(result).not.toBe(original);
      expect(await bytesOf(result)).toEqual(bytes);
      expect((result as StreamableFile).getHeaders()).toEqual({ ...fileOptions, length: bytes.length });

      const replayed = replayValue(throughJsonb(stored));
      expect(await bytesOf(replayed)).toEqual(bytes);
      expect((replayed as StreamableFile).getHeaders()).toEqual({ ...fileOptions, length: bytes.length });
    });

    // The first client still gets the file's headers; the 410 that replays get describes no file.
    it('is unreplayable when larger than the limit, and stores none of the original headers', async () => {
      const { stored, result } = await capture(new StreamableFile(Buffer.alloc(LIMIT + 1, 7), fileOptions));
      expect(stored).toEqual({
        status: META.status,
        headers: {},
        kind: 'unreplayable',
        reason: `the file is larger than ${LIMIT} bytes`,
      });
      expect((result as StreamableFile).getHeaders()).toMatchObject(fileOptions);
      expect(replayError(stored)).toBeInstanceOf(ResponseNotReplayableError);
    });

    // Leaving a for-await loop early destroys the stream: the first client would get a
    // truncated body and an AbortError. Every byte must still reach it.
    it.each([
      ['a Buffer', () => new StreamableFile(Buffer.alloc(LIMIT + 1, 7))],
      [
        'a Readable stream',
        () => new StreamableFile(Readable.from([Buffer.alloc(LIMIT, 1), Buffer.alloc(1, 2), Buffer.alloc(LIMIT, 3)])),
      ],
    ])('made from %s and larger than the limit still yields every byte to the first client', async (_, make) => {
      const original = make();
      const expected = await bytesOf(make());
      const { result } = await capture(original);
      expect(await bytesOf(result)).toEqual(expected);
    });
  });

  it.each([
    ['a JSON body', { text: 'x'.repeat(LIMIT) }],
    ['a text body', 'é'.repeat(LIMIT / 2 + 1)],
    ['a binary body', Buffer.alloc(LIMIT + 1)],
  ])('make %s larger than the limit unreplayable: the replay throws 410', async (_, original) => {
    const { stored, result } = await capture(original);
    expect(result).toBe(original);
    expect(stored).toEqual({
      status: META.status,
      headers: {},
      kind: 'unreplayable',
      reason: `the response body is larger than ${LIMIT} bytes`,
    });
    const error = replayError(throughJsonb(stored));
    expect(error).toBeInstanceOf(ResponseNotReplayableError);
    expect((error as ResponseNotReplayableError).getStatus()).toBe(410);
    expect((error as ResponseNotReplayableError).getProblem().detail).toContain(stored.reason);
  });

  it('count the limit in bytes, inclusive', async () => {
    expect((await capture('é'.repeat(LIMIT / 2))).stored.kind).toBe('text');
    expect((await capture(Buffer.alloc(LIMIT))).stored.kind).toBe('binary');
    expect((await capture(Buffer.alloc(LIMIT + 1))).stored.kind).toBe('unreplayable');
    expect((await capture(new StreamableFile(Buffer.alloc(LIMIT)))).stored.kind).toBe('file');
  });

  it.each([
    ['a Node Readable', () => Readable.from(['a', 'b'])],
    ['a web ReadableStream', () => new ReadableStream({ start: (c) => c.close() })],
  ])('make %s unreplayable and hand it on untouched', async (_, make) => {
    const original = make();
    const { stored, result } = await capture(original);
    expect(result).toBe(original);
    expect(stored).toEqual({
      status: META.status,
      headers: {},
      kind: 'unreplayable',
      reason: expect.stringContaining('stream'),
    });
    expect(replayError(stored)).toBeInstanceOf(ResponseNotReplayableError);
  });
});

describe('captureError and replayValue', () => {
  it.each([
    ['a built-in exception', new BadRequestException('amount must be positive')],
    ['an object response', new HttpException({ code: 'card_declined', detail: { z: 1, a: 2 } }, 402)],
    ['a string response', new HttpException('I am a teapot', 418)],
  ])('rethrow %s with the same status and response', (_, original) => {
    const headers = { 'content-type': 'application/json' };
    const stored = captureError(original, headers);
    expect(stored).toMatchObject({ status: original.getStatus(), headers, kind: 'error' });

    const error = replayError(throughJsonb(stored));
    expect(error).toBeInstanceOf(HttpException);
    expect((error as HttpException).getStatus()).toBe(original.getStatus());
    expect((error as HttpException).getResponse()).toEqual(original.getResponse());
    expect(JSON.stringify((error as HttpException).getResponse())).toBe(JSON.stringify(original.getResponse()));
  });
});
