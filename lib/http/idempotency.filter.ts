import { type ArgumentsHost, Catch, type ExceptionFilter } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { IdempotencyError } from '../errors.js';

/**
 * Renders the library's errors as `application/problem+json` (RFC 9457), as the IETF
 * draft asks. Registered by `IdempotencyModule`; an application filter that catches
 * everything takes precedence, and then still finds a problem document in `getResponse()`.
 */
@Catch(IdempotencyError)
export class IdempotencyExceptionFilter implements ExceptionFilter<IdempotencyError> {
  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(error: IdempotencyError, host: ArgumentsHost): void {
    const { httpAdapter } = this.adapterHost;
    const response = host.switchToHttp().getResponse<unknown>();
    httpAdapter.setHeader(response, 'Content-Type', 'application/problem+json');
    // Sent as text: NestJS 11's Express adapter replaces the content type of an object
    // error body with application/json, which would lose the problem media type.
    httpAdapter.reply(response, JSON.stringify(error.getProblem()), error.getStatus());
  }
}
