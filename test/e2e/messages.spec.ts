import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Controller, Module, type INestApplication, type INestMicroservice } from '@nestjs/common';
import { ClientProxyFactory, MessagePattern, Payload, type ClientProxy, Transport } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { firstValueFrom } from 'rxjs';
import { Idempotent, IdempotencyModule, MemoryIdempotencyStore, PROBLEM_TYPE_BASE } from '../../lib/index.js';

interface Charge {
  id: string;
  amount: number;
}

const runs = new Map<string, number>();

@Controller()
class ChargesController {
  @MessagePattern('charge')
  @Idempotent({ key: (charge: Charge) => charge.id, concurrency: 'reject' })
  async charge(@Payload() charge: Charge): Promise<{ charged: number; run: number }> {
    const run = (runs.get(charge.id) ?? 0) + 1;
    runs.set(charge.id, run);
    await sleep(300);
    return { charged: charge.amount, run };
  }
}

@Module({
  imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })],
  controllers: [ChargesController],
})
class ChargesModule {}

/** A TCP microservice alone (no HTTP adapter), the way `createMicroservice` starts one. */
describe('message handlers over a TCP microservice', () => {
  let microservice: INestMicroservice;
  let client: ClientProxy;

  beforeAll(async () => {
    const port = await freePort();
    const moduleRef = await Test.createTestingModule({ imports: [ChargesModule] }).compile();
    microservice = moduleRef.createNestMicroservice({
      transport: Transport.TCP,
      options: { host: '127.0.0.1', port },
      logger: ['error', 'warn'],
    });
    await microservice.listen();
    client = ClientProxyFactory.create({ transport: Transport.TCP, options: { host: '127.0.0.1', port } });
    await client.connect();
  });

  afterAll(async () => {
    await client?.close();
    await microservice?.close();
  });

  const send = (charge: Charge) =>
    firstValueFrom(client.send<unknown, Charge>('charge', charge)).then(
      (reply) => ({ reply }),
      (error: unknown) => ({ error }),
    );

  it('answers a duplicate that arrives while the first runs with the 409 problem document', async () => {
    const id = randomUUID();
    const first = send({ id, amount: 5 });
    await sleep(50);
    const duplicate = await send({ id, amount: 5 });
    expect(duplicate).toEqual({
      error: expect.objectContaining({ type: PROBLEM_TYPE_BASE + 'request-in-progress', status: 409 }),
    });
    expect(await first).toEqual({ reply: { charged: 5, run: 1 } });
    expect(await send({ id, amount: 5 })).toEqual({ reply: { charged: 5, run: 1 } });
    expect(runs.get(id)).toBe(1);
  });

  it('answers a key reused with another payload with the 422 problem document, without running it', async () => {
    const id = randomUUID();
    await send({ id, amount: 5 });
    expect(await send({ id, amount: 6 })).toEqual({
      error: expect.objectContaining({ type: PROBLEM_TYPE_BASE + 'key-reused', status: 422 }),
    });
    expect(runs.get(id)).toBe(1);
  });

  it('refuses a message without a key with a problem document, without running the handler', async () => {
    const before = [...runs.values()].reduce((sum, count) => sum + count, 0);
    expect(await send({ id: '', amount: 5 })).toEqual({
      error: expect.objectContaining({ type: PROBLEM_TYPE_BASE + 'missing-message-key', status: 400 }),
    });
    expect([...runs.values()].reduce((sum, count) => sum + count, 0)).toBe(before);
  });
});

/**
 * A hybrid application: HTTP plus a TCP microservice. Connected without `inheritAppConfig`,
 * the microservice ignores global interceptors: its idempotent handlers refuse messages
 * rather than run them unguarded. Connected with it, they are guarded.
 */
describe.each([false, true])('message handlers of a hybrid application (inheritAppConfig: %s)', (inheritAppConfig) => {
  let app: INestApplication;
  let client: ClientProxy;

  beforeAll(async () => {
    const port = await freePort();
    const moduleRef = await Test.createTestingModule({ imports: [ChargesModule] }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    app.connectMicroservice({ transport: Transport.TCP, options: { host: '127.0.0.1', port } }, { inheritAppConfig });
    await app.startAllMicroservices();
    await app.listen(0, '127.0.0.1');
    client = ClientProxyFactory.create({ transport: Transport.TCP, options: { host: '127.0.0.1', port } });
    await client.connect();
  });

  afterAll(async () => {
    await client?.close();
    await app?.close();
  });

  it(inheritAppConfig ? 'runs duplicates once' : 'refuses messages, never running them unguarded', async () => {
    const id = randomUUID();
    const send = () =>
      firstValueFrom(client.send<unknown, Charge>('charge', { id, amount: 7 })).then(
        (reply) => ({ reply }),
        (error: unknown) => ({ error }),
      );
    const answers = await Promise.all([send(), send(), send()]);
    if (inheritAppConfig) {
      expect(answers.filter((answer) => 'reply' in answer)).toEqual([{ reply: { charged: 7, run: 1 } }]);
      expect(await send()).toEqual({ reply: { charged: 7, run: 1 } });
      expect(runs.get(id)).toBe(1);
    } else {
      expect(answers.every((answer) => 'error' in answer)).toBe(true);
      expect(runs.get(id)).toBeUndefined();
    }
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
