import { type ExecutionContext, HttpException, Logger } from '@nestjs/common';
import {
  describeError,
  InvalidIdempotencyKeyError,
  MissingIdempotencyKeyError,
  UnparsedBodyError,
  UnresolvedScopeError,
} from '../errors.js';
import type { FingerprintParts } from '../core/fingerprint.js';
import type { ResolvedRouteOptions } from '../idempotency.options.js';
import { parseIdempotencyKey } from './request-identity.js';
import { isStorableText } from '../core/storable-text.js';

/** The parts of an HTTP request the library reads; Express and Fastify requests both have them. */
export interface IncomingRequest {
  method: string;
  headers: Record<string, string | string[] | undefined>;
  body?: unknown;
  /** Kept by Nest when the application is created with `rawBody: true`. */
  rawBody?: unknown;
  params?: Record<string, string>;
  /** Host parameters, set by Nest for host-routed controllers. */
  hosts?: Record<string, string>;
  query?: unknown;
  /** Node's header lines as received (Express requests). */
  rawHeaders?: string[];
  /** The Node request underneath (Fastify requests). */
  raw?: { rawHeaders?: string[] };
}

const logger = new Logger('Idempotency');

/**
 * The request's key, or undefined when it has none. Node joins repeated header lines
 * into one `a, b` value, so a value with a comma is checked against the raw lines: two
 * lines make the key ambiguous (400), and so does a list in one line, since the draft's
 * value is a single string (a comma may appear only inside the quoted form).
 */
export function readKey(
  request: IncomingRequest,
  keyHeader: string,
  options: ResolvedRouteOptions,
): string | undefined {
  const value = request.headers[keyHeader];
  const { headerName } = options;
  if (typeof value === 'string' && value.includes(',') && headerLines(request, keyHeader) > 1) {
    throw new InvalidIdempotencyKeyError(headerName, 'the header must be sent once');
  }
  const key = parseIdempotencyKey(value, headerName, options.maxKeyLength);
  if (key === undefined && options.required) throw new MissingIdempotencyKeyError(headerName);
  return key;
}

function headerLines(request: IncomingRequest, keyHeader: string): number {
  const raw = request.rawHeaders ?? request.raw?.rawHeaders ?? [];
  let lines = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === keyHeader) lines++;
  return lines;
}

/**
 * The caller's scope from the route's resolver, which must give a non-empty string.
 * Anything else fails closed: never a shared scope such as "undefined". An HttpException
 * the resolver throws (401, 403) is the answer as it is.
 */
export async function resolveScope(
  options: ResolvedRouteOptions,
  request: IncomingRequest,
  context: ExecutionContext,
  where: string,
): Promise<string> {
  let scope: unknown;
  try {
    scope = await options.scope(request, context);
  } catch (error) {
    if (error instanceof HttpException) throw error;
    logger.error(`${where}: the scope resolver failed: ${describeError(error)}`);
    throw new UnresolvedScopeError();
  }
  if (typeof scope !== 'string' || scope.length === 0) {
    logger.error(
      `${where}: the scope resolver returned ${typeof scope === 'string' ? 'an empty string' : String(scope)}; ` +
        'it must return a non-empty string that identifies the caller.',
    );
    throw new UnresolvedScopeError();
  }
  // A scope the store would not keep exactly could merge two callers into one: refuse it.
  if (!isStorableText(scope)) {
    logger.error(
      `${where}: the scope resolver returned a string with NUL or a lone surrogate, which cannot be stored faithfully.`,
    );
    throw new UnresolvedScopeError();
  }
  return scope;
}

/** What makes "the same request" besides the key, per the route's fingerprint options. */
export function fingerprintParts(request: IncomingRequest, options: ResolvedRouteOptions): FingerprintParts {
  const { params, hosts, query, headers } = request;
  const fingerprinted = options.fingerprint.headers;
  return {
    body: bodyOf(request),
    params: params && Object.keys(params).length ? params : undefined,
    hosts: hosts && Object.keys(hosts).length ? hosts : undefined,
    query: options.fingerprint.query ? query : undefined,
    headers: fingerprinted.length ? Object.fromEntries(fingerprinted.map((name) => [name, headers[name]])) : undefined,
  };
}

/**
 * The parsed body, or the raw bytes when no parser read it but Nest kept them
 * (`rawBody: true`). A body that nobody read is refused: fingerprinted as "no body", a
 * different payload could otherwise replay this one.
 */
function bodyOf(request: IncomingRequest): unknown {
  if (request.body !== undefined) return request.body;
  if (Buffer.isBuffer(request.rawBody)) return request.rawBody;
  const { headers } = request;
  const length = headers['content-length'];
  const hasBody = (length !== undefined && length !== '0') || headers['transfer-encoding'] !== undefined;
  if (hasBody) throw new UnparsedBodyError(String(headers['content-type'] ?? '').split(';')[0]);
  return undefined;
}
