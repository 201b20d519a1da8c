import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Body, Controller, Module, Post, Query } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Idempotent, IdempotencyModule, MemoryIdempotencyStore } from '../../lib/index.js';
import { post } from '../support/http.js';
import { PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

const WINDOW_MS = 800;
const runs = new Map<string, number>();
const ran = (id: string) => runs.set(id, (runs.get(id) ?? 0) + 1).get(id)!;

@Controller('forms')
@Idempotent({ derive: { windowMs: WINDOW_MS }, concurrency: 'wait' })
class FormsController {
  @Post('subscribe')
  async subscribe(@Body() body: { email: string; run: string }) {
    await sleep(50);
    return { email: body.email, run: ran(body.run) };
  }

  // The query is left out of the fingerprint here, but never out of a derived key.
  @Post('donate')
  @Idempotent({ derive: { windowMs: WINDOW_MS }, fingerprint: { query: false } })
  donate(@Body() body: { run: string }, @Query('amount') amount: string) {
    return { amount, run: ran(body.run) };
  }
}

@Module({
  imports: [
    IdempotencyModule.forRoot({
      store: MemoryIdempotencyStore,
      scope: (request: { headers: Record<string, string | undefined> }) => request.headers['x-user-id'] ?? 'anonymous',
    }),
  ],
  controllers: [FormsController],
})
class FormsModule {}

describe.each(PLATFORMS)('keys derived from the request (%s)', (platform) => {
  let running: RunningApp;

  beforeAll(async () => {
    running = await startApp(FormsModule, platform);
  });

  afterAll(async () => {
    await running?.close();
  });

  const submit = (body: object, options: { user?: string; key?: string } = {}) =>
    post(running.url, '/forms/subscribe', { body, user: options.user ?? 'alice', key: options.key });

  it('answers a repeated request without a key from the first one, within the window', async () => {
    const run = randomUUID();
    const first = await submit({ email: 'a@example.com', run });
    const again = await submit({ email: 'a@example.com', run });
    expect(first.status).toBe(201);
    expect(again.text).toBe(first.text);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(runs.get(run)).toBe(1);
  });

  it('runs parallel identical requests once', async () => {
    const run = randomUUID();
    const answers = await Promise.all(Array.from({ length: 10 }, () => submit({ email: 'p@example.com', run })));
    expect(new Set(answers.map((answer) => answer.text)).size).toBe(1);
    expect(runs.get(run)).toBe(1);
  });

  it('treats another payload, or another caller, as another operation', async () => {
    const run = randomUUID();
    await submit({ email: 'a@example.com', run });
    await submit({ email: 'b@example.com', run });
    await submit({ email: 'a@example.com', run }, { user: 'bob' });
    expect(runs.get(run)).toBe(3);
  });

  it('runs the same payload again once the window since the first completion has passed', async () => {
    const run = randomUUID();
    await submit({ email: 'w@example.com', run });
    await sleep(WINDOW_MS + 300);
    const later = await submit({ email: 'w@example.com', run });
    expect(later.headers.get('idempotent-replayed')).toBeNull();
    expect(runs.get(run)).toBe(2);
  });

  it('keeps the query in a derived key, even where the fingerprint leaves it out', async () => {
    const run = randomUUID();
    const small = await post(running.url, '/forms/donate?amount=5', { body: { run }, user: 'alice' });
    const large = await post(running.url, '/forms/donate?amount=500', { body: { run }, user: 'alice' });
    expect([small.json, large.json]).toEqual([
      { amount: '5', run: 1 },
      { amount: '500', run: 2 },
    ]);
  });

  it('lets a key the client sends win over the derived one', async () => {
    const run = randomUUID();
    await submit({ email: 'k@example.com', run }, { key: randomUUID() });
    await submit({ email: 'k@example.com', run }, { key: randomUUID() });
    expect(runs.get(run)).toBe(2);
    const key = randomUUID();
    await submit({ email: 'k@example.com', run }, { key });
    const retry = await submit({ email: 'k@example.com', run }, { key });
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(runs.get(run)).toBe(3);
  });
});

describe('derived keys: refused where they cannot apply', () => {
  const boot = async (decorator: object, moduleOptions: object = {}) => {
    @Controller('x')
    class X {
      @Post()
      @Idempotent(decorator)
      create() {
        return {};
      }
    }
    @Module({
      imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, ...moduleOptions })],
      controllers: [X],
    })
    class M {}
    const moduleRef = await Test.createTestingModule({ imports: [M] }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    try {
      await app.init();
    } finally {
      await app.close();
    }
  };

  it('refuses a window that is not a whole number of milliseconds', async () => {
    await expect(boot({ derive: { windowMs: 0 } })).rejects.toThrow(/"derive" must be \{ windowMs \}/);
    await expect(boot({ derive: {} })).rejects.toThrow(/"derive" must be \{ windowMs \}/);
  });

  it('refuses "derive", "key" and "acknowledge" in the module options, and "key" on an HTTP route', async () => {
    await expect(boot({}, { derive: { windowMs: 1000 } })).rejects.toThrow(/"derive" belongs to one route/);
    await expect(boot({ key: () => 'k' })).rejects.toThrow(/"key" is for message handlers/);
  });
});
