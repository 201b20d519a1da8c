import { HttpException, HttpStatus } from '@nestjs/common';

/**
 * The body of an RFC 9457 problem response.
 */
export interface ProblemDetails {
  type: string;
  title: string;
  status: number;
  detail?: string;
  [extension: string]: unknown;
}

/** The message of anything thrown, for the log. */
export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Stable prefix of every problem `type` this library answers with. */
export const PROBLEM_TYPE_BASE = 'urn:nestjs-idempotency:problem:';

/**
 * Base class of every error the library answers a client with. Each subclass is
 * one case with a stable problem `type`, so clients can branch on it; the body
 * is already a problem document, so even an application's own catch-all filter
 * that renders `getResponse()` produces the right payload.
 */
export abstract class IdempotencyError extends HttpException {
  /** Headers the response must carry (for example `Retry-After`). */
  readonly headers: Readonly<Record<string, string>>;

  protected constructor(
    slug: string,
    title: string,
    status: number,
    detail: string,
    headers: Record<string, string> = {},
  ) {
    const body: ProblemDetails = { type: PROBLEM_TYPE_BASE + slug, title, status, detail };
    super(body, status);
    this.headers = headers;
  }

  getProblem(): ProblemDetails {
    return this.getResponse() as ProblemDetails;
  }
}

/** IETF draft §2.7: a request without a key on a route that requires one. */
export class MissingIdempotencyKeyError extends IdempotencyError {
  constructor(headerName: string) {
    super(
      'missing-key',
      'Idempotency key missing',
      HttpStatus.BAD_REQUEST,
      `This operation is idempotent and requires an ${headerName} header.`,
    );
  }
}

/** The header is present but not a key this library accepts (length, characters, quoting). */
export class InvalidIdempotencyKeyError extends IdempotencyError {
  constructor(headerName: string, reason: string) {
    super('invalid-key', 'Idempotency key invalid', HttpStatus.BAD_REQUEST, `${headerName}: ${reason}`);
  }
}

/** IETF draft §2.7: the key was already used with a different request payload. */
export class IdempotencyKeyReuseError extends IdempotencyError {
  constructor() {
    super(
      'key-reused',
      'Idempotency key reused with a different payload',
      HttpStatus.UNPROCESSABLE_ENTITY,
      'This key was first used with a different request payload; use a new key for a new request.',
    );
  }
}

/** IETF draft §2.7: the first request with this key is still being processed. */
export class RequestInProgressError extends IdempotencyError {
  constructor(retryAfterSeconds: number) {
    super(
      'request-in-progress',
      'A request with this idempotency key is in progress',
      HttpStatus.CONFLICT,
      'The original request with this key has not finished yet; retry later to receive its result.',
      { 'Retry-After': String(retryAfterSeconds) },
    );
  }
}

/** The record store could not be reached: nothing ran, so the client may retry. */
export class IdempotencyStoreUnavailableError extends IdempotencyError {
  constructor(retryAfterSeconds: number) {
    super(
      'store-unavailable',
      'Idempotency store unavailable',
      HttpStatus.SERVICE_UNAVAILABLE,
      'The request was not processed because its idempotency key could not be checked; retry later.',
      { 'Retry-After': String(retryAfterSeconds) },
    );
  }
}

/**
 * The first request with this key completed, but its response could not be stored
 * faithfully (too large, or a streaming body). The operation is not run again; the
 * original response cannot be replayed. 410: the result exists but is gone from here.
 */
export class ResponseNotReplayableError extends IdempotencyError {
  constructor(reason: string) {
    super(
      'response-not-replayable',
      'Original response cannot be replayed',
      HttpStatus.GONE,
      `The request with this key was already processed, but its response was not stored: ${reason}.`,
    );
  }
}

/**
 * The scope resolver gave no usable identity for the caller (nothing, an empty or a
 * non-string value, or it threw): keys cannot be kept apart per caller, so nothing runs
 * and nothing is stored. A server-side fault, not the client's: 500, with the cause in the log.
 */
export class UnresolvedScopeError extends IdempotencyError {
  constructor() {
    super(
      'scope-unresolved',
      'Caller identity unavailable',
      HttpStatus.INTERNAL_SERVER_ERROR,
      'The server could not determine whose idempotency key this is, so the request was not processed.',
    );
  }
}

/**
 * The request has a body that no body parser read (for example text/plain on Express
 * without a text parser): it cannot be compared with a retry's body, so it is refused
 * rather than fingerprinted as empty, which would let a different payload replay this one.
 */
export class UnparsedBodyError extends IdempotencyError {
  constructor(contentType: string) {
    super(
      'unparsed-body',
      'Request body not readable',
      HttpStatus.UNSUPPORTED_MEDIA_TYPE,
      `The ${contentType ? `${contentType} ` : ''}body of this request was not parsed by the server, so this ` +
        'idempotent operation cannot accept it.',
    );
  }
}

/**
 * A key, name or scope that cannot identify an operation outside HTTP (`run()`, a message,
 * a provider method): not a string, empty, too long, or text the store cannot keep
 * exactly. Nothing runs and nothing is stored.
 */
export class InvalidIdempotencyInputError extends IdempotencyError {
  constructor(detail: string) {
    super('invalid-input', 'Idempotency key, name or scope invalid', HttpStatus.BAD_REQUEST, detail);
  }
}

/**
 * A message without a key on a handler that requires one: it is refused, never run
 * unguarded. Set `key` to read one from the payload, or `required: false` to let such
 * messages through without idempotency.
 */
export class MissingMessageKeyError extends IdempotencyError {
  constructor(where: string, fromExtractor: boolean) {
    super(
      'missing-message-key',
      'Message idempotency key missing',
      HttpStatus.BAD_REQUEST,
      `${where}: the message has no idempotency key ` +
        (fromExtractor
          ? '(the "key" extractor returned none), so it is refused.'
          : '(no AMQP messageId, no Nats-Msg-Id header), so it is refused. Publish it with an id, or give the handler a "key" extractor.'),
    );
  }
}

/** A call of an `@IdempotentMethod()` whose `key` gave none: refused, never run unguarded (unless `required: false`). */
export class MissingMethodKeyError extends IdempotencyError {
  constructor(where: string) {
    super(
      'missing-method-key',
      'Method idempotency key missing',
      HttpStatus.BAD_REQUEST,
      `${where}: the "key" of @IdempotentMethod() returned no key for this call, so it is refused.`,
    );
  }
}

/**
 * An `@Idempotent()` message handler was reached without the library's interceptor: in a
 * hybrid application, a microservice connected without `inheritAppConfig: true` does not
 * get the application's global interceptors. The message is refused, never run unguarded.
 */
export class UnguardedMessageError extends IdempotencyError {
  constructor(where: string) {
    super(
      'unguarded-message',
      'Message handler not guarded',
      HttpStatus.INTERNAL_SERVER_ERROR,
      `${where}: the message reached an @Idempotent() handler without the idempotency interceptor, so it is refused. ` +
        'In a hybrid application, connect the microservice with app.connectMicroservice(options, { inheritAppConfig: true }) ' +
        'so that it gets the global interceptor IdempotencyModule registers.',
    );
  }
}
