import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { STATUS_CODES } from 'node:http';

/**
 * Every error of the sample app as `application/problem+json` (RFC 9457). The body is a
 * function of the exception's status and `getResponse()` alone, so a stored error that the
 * idempotency library replays renders byte for byte as the first time.
 */
@Catch()
export class ProblemFilter implements ExceptionFilter {
  private readonly logger = new Logger('ProblemFilter');

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const { httpAdapter } = this.adapterHost;
    const response = host.switchToHttp().getResponse<unknown>();
    const status = exception instanceof HttpException ? exception.getStatus() : 500;
    if (!(exception instanceof HttpException)) this.logger.error(exception);
    httpAdapter.setHeader(response, 'Content-Type', 'application/problem+json');
    httpAdapter.reply(response, problemOf(exception, status), status);
  }
}

function problemOf(exception: unknown, status: number): Record<string, unknown> {
  const title = STATUS_CODES[status] ?? 'Error';
  if (!(exception instanceof HttpException)) {
    return { type: 'about:blank', title, status, detail: 'An unexpected error occurred.' };
  }
  const body = exception.getResponse();
  if (typeof body === 'object' && body !== null && 'type' in body) return body;
  const message = typeof body === 'string' ? body : (body as { message?: unknown }).message;
  const detail = Array.isArray(message) ? message.join('; ') : typeof message === 'string' ? message : title;
  return { type: 'about:blank', title, status, detail };
}
