import { type CallHandler, type ExecutionContext, Injectable, Logger, type NestInterceptor } from '@nestjs/common';
import { concat, defer, from, ignoreElements, lastValueFrom, mergeAll, type Observable, of } from 'rxjs';
import { IdempotencyService } from '../core/idempotency.service.js';
import { checkIdentityPart } from '../core/run-options.js';
import { resultOf } from '../core/stored-response.js';
import { MissingMessageKeyError, UnresolvedScopeError, describeError } from '../errors.js';
import { IdempotentRoutes } from '../idempotent-routes.js';
import type { Handler } from '../route-metadata.js';
import { messageIdOf } from './message-key.js';
import type { MessageRoute } from './message-route.js';
import { markGuarded } from './unguarded-message.check.js';

/**
 * The message mapping (`@nestjs/microservices`): a message in, its handler run once per
 * key. A request (`@MessagePattern`) repeated gets the stored reply; an event
 * (`@EventPattern`) repeated is only acknowledged. Every message the library is done
 * with is acknowledged through the route's `acknowledge`, and only once its outcome is
 * stored. Registered globally by `IdempotencyModule`; handlers without `@Idempotent()`
 * pass straight through.
 */
@Injectable()
export class MessageIdempotencyInterceptor implements NestInterceptor {
  private readonly logger = new Logger('Idempotency');

  constructor(
    private readonly routes: IdempotentRoutes,
    private readonly service: IdempotencyService,
  ) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'rpc') return next.handle();
    const route = this.routes.of(context.getClass(), context.getHandler() as Handler);
    if (route?.context !== 'rpc') return next.handle();
    markGuarded(context);
    return from(this.handle(route, context, next)).pipe(mergeAll());
  }

  /** One promise from claim to completion, as for HTTP: a claimed key is never left behind. */
  private async handle(
    route: MessageRoute,
    context: ExecutionContext,
    next: CallHandler,
  ): Promise<Observable<unknown>> {
    const rpc = context.switchToRpc();
    const data: unknown = rpc.getData();
    const transport: unknown = rpc.getContext();
    const where = `${route.kind} ${route.pattern}`;
    const key = route.key ? await route.key(data, transport) : messageIdOf(transport);
    if (key === undefined || key === null || key === '') {
      if (route.options.required) throw new MissingMessageKeyError(where, route.key !== undefined);
      return this.acknowledgedAfter(route, data, transport, next.handle());
    }
    checkIdentityPart(key, 'key', where, false);
    const scope = route.scope ? await this.scopeOf(route, data, context, where) : '';
    const identity = { scope, method: route.kind, route: route.pattern, key };
    const outcome = await this.service.begin(route.options, identity, { body: data });
    if (outcome.kind === 'replay') {
      await route.acknowledge?.(data, transport);
      // An event has no reply; a request's repeat gets the stored one.
      return of(route.kind === 'event' ? undefined : resultOf(outcome.response));
    }
    // A reply stream's last value is its reply: that is what is stored and replayed.
    const reply = await this.service.execute(outcome.execution, () =>
      lastValueFrom(next.handle(), { defaultValue: undefined }),
    );
    // Only now is the result stored (in transactional mode, the handler's writes committed):
    // a message acknowledged earlier would be lost if the process died before this point.
    await route.acknowledge?.(data, transport);
    return of(reply);
  }

  /** An unguarded run (`required: false`, no key) is acknowledged once its handler has completed. */
  private acknowledgedAfter(
    route: MessageRoute,
    data: unknown,
    transport: unknown,
    handled: Observable<unknown>,
  ): Observable<unknown> {
    const { acknowledge } = route;
    if (!acknowledge) return handled;
    const acknowledged = defer(async () => {
      await acknowledge(data, transport);
    });
    return concat(handled, acknowledged.pipe(ignoreElements()));
  }

  /** A scope from the decorators: a non-empty string, or the message is refused (never a shared scope). */
  private async scopeOf(route: MessageRoute, data: unknown, context: ExecutionContext, where: string): Promise<string> {
    let scope: unknown;
    try {
      scope = await route.scope!(data, context);
    } catch (error) {
      this.logger.error(`${where}: the scope resolver failed: ${describeError(error)}`);
      throw new UnresolvedScopeError();
    }
    if (typeof scope !== 'string' || scope === '') {
      this.logger.error(`${where}: the scope resolver must return a non-empty string, got ${String(scope)}.`);
      throw new UnresolvedScopeError();
    }
    checkIdentityPart(scope, 'scope', where, false);
    return scope;
  }
}
