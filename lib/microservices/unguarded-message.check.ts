import { type CallHandler, type ExecutionContext, Injectable, type NestInterceptor } from '@nestjs/common';
import type { Observable } from 'rxjs';
import { UnguardedMessageError } from '../errors.js';
import { nameOf, type Handler } from '../route-metadata.js';

/** The calls (their argument lists, one per call) the global message interceptor has taken on. */
const guardedCalls = new WeakSet<object>();

/** @internal Marks a call of an idempotent message handler as taken on by the global interceptor. */
export function markGuarded(context: ExecutionContext): void {
  guardedCalls.add(context.getArgs());
}

/**
 * Attached by `@Idempotent()` to the handler itself, so that it runs wherever the handler
 * runs: a message that reaches it without the global interceptor having taken it on is
 * refused. Nest gives a hybrid application's microservice a configuration of its own,
 * without the application's global interceptors, unless it is connected with
 * `inheritAppConfig: true`; its `@Idempotent()` handlers would otherwise run every
 * duplicate while their authors believe them guarded. HTTP requests pass untouched.
 */
@Injectable()
export class UnguardedMessageCheck implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() === 'rpc' && !guardedCalls.has(context.getArgs())) {
      throw new UnguardedMessageError(`${context.getClass().name}.${nameOf(context.getHandler() as Handler)}`);
    }
    return next.handle();
  }
}
