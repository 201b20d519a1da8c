import {
  type CallHandler,
  type ExecutionContext,
  HttpException,
  Injectable,
  type NestInterceptor,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { from, lastValueFrom, mergeAll, type Observable, of } from 'rxjs';
import { describeError, IdempotencyError } from '../errors.js';
import type { Execution } from '../core/execution.js';
import { fingerprintParts, type IncomingRequest, readKey, resolveScope } from './http-request.js';
import { IdempotentRoutes } from '../idempotent-routes.js';
import { type HttpRoute, servedRoute } from './http-route.js';
import { declaredHeaders, type Handler, SAFE_METHODS } from '../route-metadata.js';
import { IdempotencyService } from '../core/idempotency.service.js';
import type { StoredResponse } from '../core/record.js';
import { captureError, captureResult, replayValue } from '../core/stored-response.js';

/** The de-facto replay marker (Stripe and others); the draft defines none. */
export const REPLAYED_HEADER = 'Idempotent-Replayed';

/** Set by @nestjs/core 11.2.8+ and 12.3+ on a request whose pipes rejected it (its handler did not run). */
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
    const route = this.routes.of(context.getClass(), context.getHandler() as Handler);
    if (route?.context !== 'http') return next.handle();
    const http = context.switchToHttp();
    const request = http.getRequest<IncomingRequest>();
    // Requests that must not change state pass a class-wide @Idempotent() untouched.
    if (route.safeMethodsPass && SAFE_METHODS.has(request.method)) return next.handle();
    return from(this.handle(route, request, http.getResponse(), context, next)).pipe(mergeAll());
  }

  /**
   * One promise from claim to completion: once the key is claimed, the handler's result
   * is stored (or the key released) even if the subscriber goes away meanwhile (a client
   * disconnect, an outer timeout interceptor), so a claimed key is never left behind.
   */
  private async handle(
    route: HttpRoute,
    request: IncomingRequest,
    response: unknown,
    context: ExecutionContext,
    next: CallHandler,
  ): Promise<Observable<unknown>> {
    try {
      let { options } = route;
      const { deriveWindowMs } = route;
      // The key first: a request without one is a 400 whatever the scope resolver would do.
      let key = readKey(
        request,
        route.keyHeader,
        deriveWindowMs === undefined ? options : { ...options, required: false },
      );
      if (key === undefined && deriveWindowMs === undefined) return next.handle();
      const path = servedRoute(route, request);
      const scope = await resolveScope(options, request, context, `${request.method} ${path}`);
      const parts = fingerprintParts(request, options);
      if (key === undefined) {
        // Derived: the same request of the same caller is the same operation for the window.
        // The query is always part of it, whatever the fingerprint options: a key the client
        // did not choose must not make `?amount=5` and `?amount=500` one operation.
        key = this.service.derivedKey({ ...parts, query: request.query });
        options = { ...options, ttlMs: deriveWindowMs! };
      }
      const outcome = await this.service.begin(options, { scope, method: request.method, route: path, key }, parts);
      switch (outcome.kind) {
        case 'replay':
          return of(this.replay(outcome.response, response));
        case 'execute':
          return of(await this.execute(outcome.execution, next, request, response));
      }
    } catch (error) {
      if (error instanceof IdempotencyError) {
        // Nest sets a route's @Header() headers before interceptors run. They describe the
        // route's own response (its Location, its ETag), which a problem (400, 409, 410, 422,
        // 503) is not: remove them.
        this.removeHeaders(response, declaredHeaders(context.getHandler() as Handler));
        this.setHeaders(response, error.headers);
      }
      throw error;
    }
  }

  private async execute(execution: Execution, next: CallHandler, request: object, response: unknown): Promise<unknown> {
    const { options } = execution;
    let result: unknown;
    try {
      result = await this.service.runHandler(execution, () => lastValueFrom(next.handle()));
    } catch (error) {
      throw await this.service.fail(execution, error, () => {
        const handlerRan = !(request as Record<symbol, unknown>)[REJECTED_BY_PIPES];
        if (handlerRan && error instanceof HttpException && options.storeErrors(error.getStatus(), error)) {
          return captureError(error, this.replayHeaders(execution, response));
        }
        return undefined;
      });
    }
    let captured;
    try {
      captured = await captureResult(
        result,
        { status: this.statusOf(response), headers: this.replayHeaders(execution, response) },
        options.maxResponseBytes,
      );
    } catch (error) {
      // Not serialisable (a cycle, a BigInt): the platform cannot send it either, so the
      // client gets a 500, and a retry gets 410 where the effect stays (lease mode).
      await this.service.abandon(
        execution,
        this.statusOf(response),
        `the result could not be serialised (${describeError(error)})`,
      );
      throw error;
    }
    const instead = await this.service.complete(execution, captured.stored);
    return instead ? this.replay(instead, response) : captured.result;
  }

  private replay(stored: StoredResponse, response: unknown): unknown {
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
    for (const [name, value] of Object.entries(headers))
      this.adapterHost.httpAdapter.setHeader(response, name, value as string);
  }

  /** Express responses (Node's) and Fastify replies both have removeHeader(). */
  private removeHeaders(response: unknown, names: readonly string[]): void {
    for (const name of names) (response as { removeHeader(name: string): void }).removeHeader(name);
  }

  /** Express and Fastify replies both expose the status code set so far as `statusCode`. */
  private statusOf(response: unknown): number {
    return (response as { statusCode: number }).statusCode;
  }
}
