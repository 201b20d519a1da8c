import { type ArgumentsHost, Catch, type ExceptionFilter } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { type Observable, throwError } from 'rxjs';
import { IdempotencyError } from '../errors.js';

/**
 * Renders the library's errors as `application/problem+json` (RFC 9457), as the IETF
 * draft asks. Registered by `IdempotencyModule`; an application filter that catches
 * everything takes precedence, and then still finds a problem document in `getResponse()`.
 */
@Catch(IdempotencyError)
export class IdempotencyExceptionFilter implements ExceptionFilter<IdempotencyError> {
  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(error: IdempotencyError, host: ArgumentsHost): Observable<never> | void {
    if (host.getType() !== 'http') {
      // A global filter also catches message handlers' errors, where there is no HTTP
      // response (nor, in a microservice alone, an HTTP adapter): Nest's RPC layer expects
      // an observable error, which it sends to the client as is: the problem document.
      return throwError(() => error.getProblem());
    }
    const { httpAdapter } = this.adapterHost;
    const response = host.switchToHttp().getResponse<unknown>();
    httpAdapter.setHeader(response, 'Content-Type', 'application/problem+json');
    // Sent as text: NestJS 11's Express adapter replaces the content type of an object
    // error body with application/json, which would lose the problem media type.
    httpAdapter.reply(response, JSON.stringify(error.getProblem()), error.getStatus());
  }
}
