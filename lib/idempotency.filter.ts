import { type ArgumentsHost, Catch, type ExceptionFilter } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { IdempotencyError } from './errors.js';

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
    const response = host.switchToHttp().getResponse();
    httpAdapter.setHeader(response, 'Content-Type', 'application/problem+json');
    httpAdapter.reply(response, error.getProblem(), error.getStatus());
  }
}
