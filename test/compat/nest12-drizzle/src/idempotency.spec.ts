import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AppModule } from './app.module.js';
import { createTestDatabase, post, type TestDatabase } from './test-database.js';

let db: TestDatabase;
let app: INestApplication;
let baseUrl: string;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await NestFactory.create(AppModule.forDatabase(db.url), { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  baseUrl = await app.getUrl();
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

const payments = (reference: string) => db.count('payments WHERE reference = $1', [reference]);

it('runs with no TypeORM installed, on the ES module build', () => {
  expect(() => import.meta.resolve('typeorm')).toThrow();
  expect(() => import.meta.resolve('@nestjs/typeorm')).toThrow();
  expect(import.meta.resolve('nestjs-idempotency-postgres')).toMatch(/\/dist\/esm\//);
});

it('transactional mode: 20 parallel duplicates write one payment and all get its response', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const answers = await Promise.all(
    Array.from({ length: 20 }, () => post(baseUrl, '/payments', { reference, amount: 500 }, key)),
  );
  expect(await payments(reference)).toBe(1);
  for (const answer of answers)
    expect({ status: answer.status, body: answer.body }).toEqual({ status: 201, body: answers[0].body });
  expect(JSON.parse(answers[0].body)).toMatchObject({ reference, amount: 500 });
  expect(answers.filter((answer) => answer.replayed === 'true')).toHaveLength(19);
  expect(await db.record(key)).toMatchObject({ status: 'completed', response: { status: 201, body: answers[0].body } });
});

it("a payment written in Drizzle's own db.transaction() commits with the response, not before it", async () => {
  const reference = randomUUID();
  const key = randomUUID();
  // The handler throws after Drizzle's transaction "committed": that COMMIT was only a
  // savepoint's release, so the whole request rolls back and the key is free again.
  const failed = await post(baseUrl, '/payments?fail=1', { reference, amount: 700, nested: 'commit' }, key);
  expect(failed.status).toBe(500);
  expect(await payments(reference)).toBe(0);
  expect(await db.record(key)).toBeUndefined();

  const paid = await post(baseUrl, '/payments', { reference, amount: 700, nested: 'commit' }, key);
  expect(paid.status).toBe(201);
  expect(paid.replayed).toBeNull();
  expect(await payments(reference)).toBe(1);
  expect(await db.record(key)).toMatchObject({ status: 'completed', response: { status: 201, body: paid.body } });
});

it('a Drizzle transaction rolled back inside the handler undoes its own rows only', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const paid = await post(baseUrl, '/payments', { reference, amount: 300, nested: 'rollback' }, key);
  expect(paid.status).toBe(201);
  expect(await payments(`${reference}-draft`)).toBe(0);
  expect(await payments(reference)).toBe(1);
  const replay = await post(baseUrl, '/payments', { reference, amount: 300, nested: 'rollback' }, key);
  expect(replay).toEqual({ ...paid, replayed: 'true' });
  expect(await payments(reference)).toBe(1);
});

it('a handler error after the write rolls the payment back and releases the key', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const failed = await post(baseUrl, '/payments?fail=1', { reference, amount: 900 }, key);
  expect(failed.status).toBe(500);
  expect(await payments(reference)).toBe(0);
  expect(await db.record(key)).toBeUndefined();

  // The key is free: the retry (without the failure) runs the handler afresh.
  const retry = await post(baseUrl, '/payments', { reference, amount: 900 }, key);
  expect(retry.status).toBe(201);
  expect(retry.replayed).toBeNull();
  expect(await payments(reference)).toBe(1);
});

it('a stored 4xx after the write rolls the payment back and replays the 4xx', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const declined = await post(baseUrl, '/payments', { reference, amount: 50_000 }, key);
  expect(declined.status).toBe(402);
  expect(await payments(reference)).toBe(0);
  expect(await db.record(key)).toMatchObject({ status: 'completed', response: { status: 402, body: declined.body } });
  const replay = await post(baseUrl, '/payments', { reference, amount: 50_000 }, key);
  expect(replay).toEqual({ ...declined, replayed: 'true' });
  expect(await payments(reference)).toBe(0);
});

it('lease mode on the same pool: 20 parallel duplicates send one receipt', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const answers = await Promise.all(
    Array.from({ length: 20 }, () => post(baseUrl, '/receipts', { email: 'alice@example.com', reference }, key)),
  );
  expect(await db.count('receipts WHERE reference = $1', [reference])).toBe(1);
  for (const answer of answers)
    expect({ status: answer.status, body: answer.body }).toEqual({ status: 201, body: answers[0].body });
  expect(answers.filter((answer) => answer.replayed === 'true')).toHaveLength(19);
  expect(await db.record(key)).toMatchObject({ status: 'completed', response: { status: 201, body: answers[0].body } });
});
