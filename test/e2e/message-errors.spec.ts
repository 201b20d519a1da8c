import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Controller, type INestMicroservice, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { type ClientProxy, ClientProxyFactory, MessagePattern, Transport } from '@nestjs/microservices';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { AddressInfo, Server } from 'node:net';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { lastValueFrom } from 'rxjs';
import { Idempotent, IdempotencyModule, PROBLEM_TYPE_BASE } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

let runs = 0;

@Controller()
class QuotesController {
  @MessagePattern('quote')
  @Idempotent({ key: (data: { id: string }) => data.id, concurrency: 'reject' })
  async quote(data: { id: string; amount: number }) {
    runs++;
    await sleep(300);
    return { quoted: data.amount };
  }
}

/**
 * The library's errors in a message handler reach the caller as their problem document.
 * The global problem filter also serves microservices; it used to write an HTTP response
 * there, threw, and the caller received `{}` while nothing was logged. TCP transport: no
 * broker needed.
 */
describe('idempotency errors of message handlers', () => {
  let db: TestDatabase;
  let server: INestMicroservice;
  let client: ClientProxy;

  beforeAll(async () => {
    db = await createTestDatabase();
    @Module({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url }),
        IdempotencyModule.forRoot({ fingerprintSecret: 'a test secret of enough bytes' }),
      ],
      controllers: [QuotesController],
    })
    class QuotesModule {}
    server = await NestFactory.createMicroservice(QuotesModule, {
      transport: Transport.TCP,
      options: { host: '127.0.0.1', port: 0 },
      logger: ['error'],
    });
    await server.listen();
    const { port } = server.unwrap<Server>().address() as AddressInfo;
    client = ClientProxyFactory.create({ transport: Transport.TCP, options: { host: '127.0.0.1', port } });
  });

  afterAll(async () => {
    await client?.close();
    await server?.close();
    await db?.drop();
  });

  const send = (data: { id: string; amount: number }) =>
    lastValueFrom(client.send('quote', data)).then(
      (reply: unknown) => ({ reply }),
      (error: unknown) => ({ error }),
    );

  it('answers a parallel duplicate (reject) with the in-progress problem, and a reused key with 422', async () => {
    const id = randomUUID();
    const [first, duplicate] = await Promise.all([
      send({ id, amount: 5 }),
      sleep(100).then(() => send({ id, amount: 5 })),
    ]);
    expect(first).toEqual({ reply: { quoted: 5 } });
    expect(duplicate).toEqual({
      error: expect.objectContaining({ type: PROBLEM_TYPE_BASE + 'request-in-progress', status: 409 }),
    });
    expect(await send({ id, amount: 6 })).toEqual({
      error: expect.objectContaining({
        type: PROBLEM_TYPE_BASE + 'key-reused',
        status: 422,
        title: expect.any(String),
      }),
    });
    expect(await send({ id, amount: 5 })).toEqual({ reply: { quoted: 5 } });
    expect(runs).toBe(1);
  });
});
