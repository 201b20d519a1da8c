import { type ArgumentsHost, Catch, type ExceptionFilter, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { type Observable, throwError } from 'rxjs';
import { IdempotencyError } from '../errors.js';

/**
 * Renders the library's errors as `application/problem+json` (RFC 9457), as the IETF
 * draft asks. Registered by `IdempotencyModule`; an application filter that catches
 * everything takes precedence, and then still finds a problem document in `getResponse()`.
 *
 * Global filters also serve message handlers (a microservice, or a hybrid app with
 * `inheritAppConfig`), where there is no HTTP response to write: there the problem
 * document is the error, as Nest sends an `RpcException`'s object to the caller.
 */
@Catch(IdempotencyError)
export class IdempotencyExceptionFilter implements ExceptionFilter<IdempotencyError> {
  private readonly logger = new Logger('Idempotency');

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(error: IdempotencyError, host: ArgumentsHost): void | Observable<never> {
    const problem = error.getProblem();
    if (host.getType() !== 'http') {
      // A global filter also catches message handlers' errors, where there is no HTTP
      // response (nor, in a microservice alone, an HTTP adapter): Nest's RPC layer expects
      // an observable error, which it sends to the caller as is: the problem document. An
      // event has no caller to receive it: without the log line it would vanish.
      this.logger.warn(`${host.getType()} message refused: ${problem.title}. ${problem.detail}`);
      return throwError(() => problem);
    }
    const { httpAdapter } = this.adapterHost;
    const response = host.switchToHttp().getResponse<unknown>();
    httpAdapter.setHeader(response, 'Content-Type', 'application/problem+json');
    // Sent as text: NestJS 11's Express adapter replaces the content type of an object
    // error body with application/json, which would lose the problem media type.
    httpAdapter.reply(response, JSON.stringify(problem), error.getStatus());
  }
}
