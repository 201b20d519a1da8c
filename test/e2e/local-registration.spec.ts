import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Body, Controller, type INestApplication, Module, Post, UseFilters, UseInterceptors } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  Idempotent,
  IdempotencyExceptionFilter,
  IdempotencyInterceptor,
  IdempotencyModule,
  MemoryIdempotencyStore,
  RequestInProgressError,
} from '../../lib/index.js';
import { post } from '../support/http.js';

let runs = 0;

@Controller('guarded')
@UseInterceptors(IdempotencyInterceptor)
@UseFilters(IdempotencyExceptionFilter)
class GuardedController {
  @Post()
  @Idempotent({ scope: () => 'caller' })
  create(@Body() body: { amount: number }) {
    return { run: ++runs, amount: body.amount };
  }
}

@Controller('plain')
class PlainController {
  @Post()
  create() {
    // An idempotency error outside any registered filter: Nest's own rendering, not problem+json.
    throw new RequestInProgressError(1);
  }
}

@Controller('forgotten')
class ForgottenController {
  @Post()
  @Idempotent({ scope: () => 'caller' })
  create() {
    return {};
  }
}

function appModule(controllers: unknown[]) {
  @Module({
    imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, global: false })],
    controllers: controllers as never[],
  })
  class LocalApp {}
  return LocalApp;
}

describe('global: false: the interceptors and the filter are registered per controller', () => {
  let app: INestApplication;
  let base: string;

  beforeAll(async () => {
    app = await NestFactory.create(appModule([GuardedController, PlainController]), { logger: false });
    await app.listen(0, '127.0.0.1');
    base = (await app.getUrl()).replace('[::1]', '127.0.0.1');
  });

  afterAll(async () => app?.close());

  it('a controller that names them runs once per key and replays', async () => {
    const first = await post(base, '/guarded', { key: 'k-1', body: { amount: 5 } });
    expect(first.status).toBe(201);
    const again = await post(base, '/guarded', { key: 'k-1', body: { amount: 5 } });
    expect(again.status).toBe(201);
    expect(again.text).toBe(first.text);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
    const missing = await post(base, '/guarded', { body: { amount: 5 } });
    expect(missing.status).toBe(400);
    expect(missing.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  });

  it('nothing is registered for the rest of the application', async () => {
    const plain = await post(base, '/plain', { key: 'k-2' });
    expect(plain.status).toBe(409);
    expect(plain.headers.get('content-type')).toMatch(/^application\/json/);
    expect(plain.headers.get('retry-after')).toBeNull();
  });

  it('an @Idempotent() route whose controller does not name the interceptor fails the start-up', async () => {
    const unguarded = await NestFactory.create(appModule([ForgottenController]), { logger: false });
    await expect(unguarded.init()).rejects.toThrow(
      /@Idempotent\(\) on ForgottenController\.create: IdempotencyModule has global: false.*@UseInterceptors\(IdempotencyInterceptor\)/,
    );
    await unguarded.close();
  });
});
