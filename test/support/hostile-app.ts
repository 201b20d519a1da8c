import {
  Body,
  type CanActivate,
  Controller,
  type DynamicModule,
  type ExecutionContext,
  Header,
  HttpException,
  Injectable,
  Module,
  Post,
  Res,
  UnauthorizedException,
  UseGuards,
} from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { Idempotent, IdempotencyModule, type IdempotencyModuleOptions } from '../../lib/index.js';
import { Calls } from './probe-app.js';

/** Handlers for test/e2e/hostile-input.spec.ts; each counts its runs in `calls`. */
export const calls = new Calls();

const ran = (name: string) => {
  calls.hit(name);
  return calls.count(name);
};

/** What the body arrived as, without echoing it (a 50,000-level body would not serialise). */
function describeBody(body: unknown): string {
  if (Buffer.isBuffer(body)) return `bytes:${body.length}`;
  if (typeof body === 'string') return `text:${body}`;
  return typeof body;
}

interface HeaderSetter {
  header(name: string, value: string): unknown;
}

@Controller()
export class HostileController {
  @Post('echo')
  @Idempotent()
  echo(@Body() body: unknown) {
    return { run: ran('echo'), body: describeBody(body) };
  }

  @Post('reflect')
  @Idempotent()
  reflect(@Body() body: unknown) {
    return { run: ran('reflect'), body };
  }

  @Post('policy-throws')
  @Idempotent({
    storeErrors: () => {
      throw new Error('a bug in the storage policy');
    },
  })
  policyThrows() {
    throw new HttpException({ message: 'no such account', run: ran('policy-throws') }, 404);
  }

  @Post('large')
  @Idempotent({ maxResponseBytes: 16 })
  @Header('Location', '/x/1')
  @Header('ETag', '"v1"')
  large() {
    return { run: ran('large'), data: 'x'.repeat(100) };
  }

  @Post('declined')
  @Idempotent()
  declined(@Res({ passthrough: true }) response: HeaderSetter) {
    // Set by hand: @Header() applies to successful responses only.
    response.header('Location', '/x/2');
    response.header('ETag', '"v2"');
    throw new HttpException({ message: 'card declined', run: ran('declined') }, 402);
  }
}

/**
 * The scope resolver under test, chosen per request by `X-Scope`: the broken ones of the
 * brief, a long subject from `X-Subject`, or 'tester'.
 */
export function scopeByHeader(request: { headers: Record<string, string | undefined> }): string {
  const broken: Record<string, () => unknown> = {
    undefined: () => undefined,
    null: () => null,
    empty: () => '',
    number: () => 42,
    throws: () => {
      throw new Error('the resolver has a bug');
    },
    unauthorized: () => {
      throw new UnauthorizedException('who are you?');
    },
    subject: () => request.headers['x-subject'],
    // As a JSON-decoded claim can carry them (a JWT "sub" of "caf\ud800" or "a\u0000b").
    nul: () => 'a\0b',
    'lone-surrogate': () => 'caf\ud800',
    'replacement-char': () => 'caf\ufffd',
  };
  const which = request.headers['x-scope'];
  return (which === undefined ? 'tester' : broken[which]()) as string;
}

export function hostileModule(url: string, options: IdempotencyModuleOptions = {}): DynamicModule {
  @Module({})
  class HostileModule {}
  return {
    module: HostileModule,
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url, retryAttempts: 0 }),
      IdempotencyModule.forRoot({ scope: scopeByHeader, ...options }),
    ],
    controllers: [HostileController],
  };
}

/** Stands in for authentication: sets the principal the default scope reads. */
@Injectable()
class SignedIn implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    context.switchToHttp().getRequest().user = { id: 'u1' };
    return true;
  }
}

/** Principals whose id is not a usable text: the default scope must not stringify them. */
@Injectable()
class ObjectIdUser implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest();
    request.user = { id: { tenant: 't1', name: request.headers['x-user'] } };
    return true;
  }
}

@Controller()
export class DefaultScopeController {
  @Post('object-id')
  @UseGuards(ObjectIdUser)
  @Idempotent()
  objectId() {
    return { run: ran('object-id') };
  }

  @Post('anonymous')
  @Idempotent()
  anonymous() {
    return { run: ran('anonymous') };
  }

  @Post('signed-in')
  @UseGuards(SignedIn)
  @Idempotent()
  signedIn() {
    return { run: ran('signed-in') };
  }
}

/** An app on the default scope (no `scope` option). */
export function defaultScopeModule(url: string): DynamicModule {
  @Module({})
  class DefaultScopeModule {}
  return {
    module: DefaultScopeModule,
    imports: [TypeOrmModule.forRoot({ type: 'postgres', url, retryAttempts: 0 }), IdempotencyModule.forRoot()],
    controllers: [DefaultScopeController],
  };
}
