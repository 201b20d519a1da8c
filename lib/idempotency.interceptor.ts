import {
  type CallHandler,
  type ExecutionContext,
  HttpException,
  Injectable,
  type NestInterceptor,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { catchError, from, lastValueFrom, mergeMap, type Observable } from 'rxjs';
import { IdempotencyError } from './errors.js';
import { IdempotentRoutes } from './idempotent-routes.js';
import { type Execution, IdempotencyService, type IncomingRequest } from './idempotency.service.js';
import type { StoredResponse } from './record.js';
import { captureError, captureResult, replayValue } from './stored-response.js';

/** The de-facto replay marker (Stripe and others); the draft defines none. */
export const REPLAYED_HEADER = 'Idempotent-Replayed';

/** Set by @nestjs/core 12.2+ on a request whose pipes rejected it (its handler did not run). */
const REJECTED_BY_PIPES = Symbol.for('nestjs:rejected-by-pipes');

/**
 * The HTTP mapping: request in, stored response out. Registered globally by
 * `IdempotencyModule`; routes without `@Idempotent()` pass straight through.
 * Reads and writes responses only through Nest's HTTP adapter and the properties
 * Express and Fastify share, so both platforms behave the same.
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  constructor(
    private readonly routes: IdempotentRoutes,
    private readonly service: IdempotencyService,
    private readonly adapterHost: HttpAdapterHost,
  ) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const route = this.routes.of(context.getClass(), context.getHandler());
    if (!route) return next.handle();
    const http = context.switchToHttp();
    const request = http.getRequest<IncomingRequest>();
    const response = http.getResponse();

    return from(this.service.begin(route, request, context)).pipe(
      catchError((error) => {
        if (error instanceof IdempotencyError) this.setHeaders(response, error.headers);
        throw error;
      }),
      mergeMap((outcome) => {
        switch (outcome.kind) {
          case 'bypass':
            return next.handle();
          case 'replay':
            return from(this.replay(outcome.response, response));
          case 'execute':
            // A promise, not an operator chain: once the handler has started, its result
            // is stored (or the key released) even if the client goes away meanwhile.
            return from(this.execute(outcome.execution, next, request, response));
        }
      }),
    );
  }

  private async execute(execution: Execution, next: CallHandler, request: object, response: unknown): Promise<unknown> {
    let result: unknown;
    try {
      result = await lastValueFrom(next.handle());
    } catch (error) {
      const handlerRan = !(request as Record<symbol, unknown>)[REJECTED_BY_PIPES];
      if (handlerRan && error instanceof HttpException && execution.options.storeErrors(error.getStatus(), error)) {
        await this.service.complete(execution, captureError(error, this.replayHeaders(execution, response)));
      } else {
        await this.service.release(execution);
      }
      throw error;
    }
    let captured;
    try {
      captured = await captureResult(
        result,
        { status: this.statusOf(response), headers: this.replayHeaders(execution, response) },
        execution.options.maxResponseBytes,
      );
    } catch (error) {
      // Not serialisable (a cycle, a BigInt): the platform could not send it either.
      await this.service.release(execution);
      throw error;
    }
    await this.service.complete(execution, captured.stored);
    return captured.result;
  }

  private async replay(stored: StoredResponse, response: unknown): Promise<unknown> {
    const { httpAdapter } = this.adapterHost;
    httpAdapter.status(response, stored.status);
    this.setHeaders(response, { ...stored.headers, [REPLAYED_HEADER]: 'true' });
    return replayValue(stored);
  }

  private replayHeaders(execution: Execution, response: unknown): Record<string, string | string[]> {
    const { httpAdapter } = this.adapterHost;
    const headers: Record<string, string | string[]> = {};
    for (const name of execution.options.replayHeaders) {
      const value = httpAdapter.getHeader(response, name) as string | number | string[] | undefined;
      if (value !== undefined) headers[name] = Array.isArray(value) ? value : String(value);
    }
    return headers;
  }

  private setHeaders(response: unknown, headers: Readonly<Record<string, string | string[]>>): void {
    // Both adapters pass arrays through to Node, which sends one header line per value.
    for (const [name, value] of Object.entries(headers)) this.adapterHost.httpAdapter.setHeader(response, name, value as string);
  }

  /** Express and Fastify replies both expose the status code set so far as `statusCode`. */
  private statusOf(response: unknown): number {
    return (response as { statusCode: number }).statusCode;
  }
}
