import { HttpException, StreamableFile } from '@nestjs/common';
import { Readable } from 'node:stream';
import { ResponseNotReplayableError } from '../errors.js';
import type { StoredResponse } from './record.js';
import { isStorableText } from './storable-text.js';

/**
 * Turns what a handler returned into a StoredResponse, and a StoredResponse back into
 * what the handler returned, so that Nest serialises a replay through the same path
 * (adapter, content type, JSON settings) as the original: the bytes on the wire match.
 */

export interface CapturedResult {
  stored: StoredResponse;
  /** What to send to the first client: the original value, or a stream re-made after reading it. */
  result: unknown;
}

interface ResponseMeta {
  status: number;
  headers: Record<string, string | string[]>;
}

export async function captureResult(result: unknown, meta: ResponseMeta, maxBytes: number): Promise<CapturedResult> {
  if (result instanceof StreamableFile) return captureFile(result, meta, maxBytes);
  if (isStreamingBody(result)) {
    return { result, stored: notReplayable(meta, 'the handler returned a stream, which is sent only once') };
  }
  return { result, stored: withinLimit(valueOf(result, meta), maxBytes) };
}

/**
 * A result that is a value, not an HTTP response (of `run()`, a message handler, a
 * provider method), as stored: the same kinds as a response, minus files and streams,
 * which such a result cannot be. Throws for what JSON cannot hold (a cycle, a BigInt).
 */
export function storedResult(result: unknown, maxBytes: number): StoredResponse {
  if (result instanceof StreamableFile || isStreamingBody(result)) {
    throw new TypeError('a stream is read only once, so it cannot be stored and returned again');
  }
  return withinLimit(valueOf(result, { status: 200, headers: {} }), maxBytes);
}

/** The value a stored result gives back to a repeat: JSON as parsed, text, bytes. */
export function resultOf(stored: StoredResponse): unknown {
  switch (stored.kind) {
    case 'json':
      return JSON.parse(stored.body!);
    case 'error':
      throw new HttpException(JSON.parse(stored.body!) as string | Record<string, unknown>, stored.status);
    default:
      return replayValue(stored);
  }
}

function valueOf(result: unknown, meta: ResponseMeta): StoredResponse {
  if (result === undefined) return { ...meta, kind: 'empty' };
  if (typeof result === 'string') return { ...meta, kind: 'text', ...encodeText(result) };
  if (result instanceof Uint8Array) {
    // A plain Uint8Array is not a Buffer to the platform (Express sends it as JSON): replay the same type.
    const uint8array = !Buffer.isBuffer(result);
    const body = Buffer.from(result.buffer, result.byteOffset, result.byteLength).toString('base64');
    return { ...meta, kind: 'binary', body, encoding: 'base64', ...(uint8array && { uint8array }) };
  }
  // JSON text, not a JSONB object: JSONB would reorder keys and the replay would differ.
  const body: string | undefined = JSON.stringify(result);
  // An object whose toJSON() gives a primitive (a Date, a Decimal) is sent as JSON, but
  // the bare primitive would be sent as text: it is replayed inside an object again.
  const boxed = typeof result === 'object' && result !== null && body !== undefined && !/^[[{]/.test(body);
  return body === undefined ? { ...meta, kind: 'empty' } : { ...meta, kind: 'json', body, ...(boxed && { boxed }) };
}

/** A thrown HttpException, stored as its status and `getResponse()`, which filters render. */
export function captureError(error: HttpException, headers: Record<string, string | string[]>): StoredResponse {
  return { status: error.getStatus(), headers, kind: 'error', body: JSON.stringify(error.getResponse()) };
}

/** The value to hand back to Nest for a stored response; errors are thrown. */
export function replayValue(stored: StoredResponse): unknown {
  switch (stored.kind) {
    case 'json': {
      const value: unknown = JSON.parse(stored.body!);
      return stored.boxed ? { toJSON: () => value } : value;
    }
    case 'text':
      return decode(stored).toString('utf8');
    case 'binary':
      return stored.uint8array ? new Uint8Array(decode(stored)) : decode(stored);
    case 'file':
      return new StreamableFile(decode(stored), stored.file);
    case 'empty':
      return undefined;
    case 'error':
      throw new HttpException(JSON.parse(stored.body!) as string | Record<string, unknown>, stored.status);
    case 'unreplayable':
      throw new ResponseNotReplayableError(stored.reason ?? 'it could not be stored');
  }
}

async function captureFile(file: StreamableFile, meta: ResponseMeta, maxBytes: number): Promise<CapturedResult> {
  // One iterator, advanced by hand: leaving a for-await loop early would destroy the stream.
  const chunks = file.getStream()[Symbol.asyncIterator]();
  const read: Buffer[] = [];
  let size = 0;
  for (let next = await chunks.next(); !next.done; next = await chunks.next()) {
    const buffer = toBuffer(next.value);
    read.push(buffer);
    size += buffer.length;
    if (size > maxBytes) {
      // Too large to keep: the first client still gets all of it, read on from where we stopped.
      return {
        result: new StreamableFile(Readable.from(resume(read, chunks)), file.getHeaders()),
        stored: notReplayable(meta, `the file is larger than ${maxBytes} bytes`),
      };
    }
  }
  const body = Buffer.concat(read);
  const headers = file.getHeaders();
  const options = {
    type: headers.type,
    disposition: headers.disposition,
    length: headers.length ?? body.length,
  };
  return {
    result: new StreamableFile(body, options),
    stored: { ...meta, kind: 'file', body: body.toString('base64'), encoding: 'base64', file: options },
  };
}

async function* resume(read: Buffer[], rest: AsyncIterator<unknown>): AsyncGenerator<Buffer> {
  yield* read;
  for (let next = await rest.next(); !next.done; next = await rest.next()) yield toBuffer(next.value);
}

function toBuffer(chunk: unknown): Buffer {
  return Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
}

function withinLimit(stored: StoredResponse, maxBytes: number): StoredResponse {
  const size =
    stored.body === undefined ? 0 : Buffer.byteLength(stored.body, stored.encoding === 'base64' ? 'base64' : 'utf8');
  return size > maxBytes ? notReplayable(stored, `the response body is larger than ${maxBytes} bytes`) : stored;
}

/**
 * Replayed as a 410 problem, which describes no resource: none of the original's headers
 * (its Location, ETag, Content-Disposition) belong on it.
 */
function notReplayable(meta: ResponseMeta, reason: string): StoredResponse {
  return unreplayable(meta.status, reason);
}

/** A completed execution whose response cannot be replayed: retries get 410, never a second run. */
export function unreplayable(status: number, reason: string): StoredResponse {
  return { status, headers: {}, kind: 'unreplayable', reason };
}

/** JSONB text cannot hold NUL or lone surrogates: such strings are kept as base64 of their UTF-8. */
function encodeText(text: string): Pick<StoredResponse, 'body' | 'encoding'> {
  return isStorableText(text)
    ? { body: text, encoding: 'utf8' }
    : { body: Buffer.from(text, 'utf8').toString('base64'), encoding: 'base64' };
}

function decode(stored: StoredResponse): Buffer {
  return Buffer.from(stored.body ?? '', stored.encoding === 'base64' ? 'base64' : 'utf8');
}

/** Streams other than StreamableFile: Node streams, web streams and Responses, async iterables. */
function isStreamingBody(value: unknown): boolean {
  if (value === null || typeof value !== 'object') return false;
  return (
    typeof (value as { pipe?: unknown }).pipe === 'function' ||
    value instanceof ReadableStream ||
    value instanceof Response ||
    Symbol.asyncIterator in value
  );
}
