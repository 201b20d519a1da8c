import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { randomUUID } from 'node:crypto';
import { Client } from 'pg';
import { AppModule } from './app.module';
import { OrdersService } from './orders.service';

// Each run gets a database of its own on the server DATABASE_URL names, dropped at the end.
const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error('DATABASE_URL must name a PostgreSQL server');
const database = `compat_${randomUUID().replaceAll('-', '')}`;
const databaseUrl = Object.assign(new URL(serverUrl), { pathname: `/${database}` }).toString();

let app: INestApplication;
let baseUrl: string;
let db: Client;

async function onServer(sql: string): Promise<void> {
  const client = new Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

beforeAll(async () => {
  await onServer(`CREATE DATABASE ${database}`);
  app = await NestFactory.create(AppModule.forDatabase(databaseUrl), { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  baseUrl = await app.getUrl();
  db = new Client({ connectionString: databaseUrl });
  await db.connect();
});

afterAll(async () => {
  await db?.end();
  await app?.close();
  await onServer(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
});

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(`${baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-user-id': 'alice', ...headers },
    body: JSON.stringify(body),
  });
  return {
    status: response.status,
    body: await response.text(),
    contentType: response.headers.get('content-type'),
    replayed: response.headers.get('idempotent-replayed'),
  };
}

async function count(sql: string, parameters: unknown[] = []): Promise<number> {
  const { rows } = await db.query(`SELECT count(*)::int AS n FROM ${sql}`, parameters);
  return rows[0].n;
}

const runs = () => app.get(OrdersService).runs;

// On Nest 11 too: its Express adapter would turn an object error body into application/json.
function expectProblem(response: Awaited<ReturnType<typeof post>>, status: number, type: string) {
  expect(response.status).toBe(status);
  expect(response.contentType).toMatch(/^application\/problem\+json/);
  expect(JSON.parse(response.body)).toMatchObject({ status, type: `urn:nestjs-idempotency:problem:${type}` });
}

it('loads the CommonJS build of the library', () => {
  expect(require.resolve('nestjs-idempotency-postgres')).toMatch(/[\\/]dist[\\/]cjs[\\/]/);
});

it('replays the first response to a retry, and the handler runs once', async () => {
  const before = runs();
  const key = { 'idempotency-key': randomUUID() };
  const first = await post('/orders', { item: 'book', quantity: 2 }, key);
  const retry = await post('/orders', { item: 'book', quantity: 2 }, key);
  expect(first.status).toBe(201);
  expect(first.replayed).toBeNull();
  expect(retry).toEqual({ ...first, replayed: 'true' });
  expect(runs()).toBe(before + 1);
});

it('answers 422 to the same key with another body', async () => {
  const key = { 'idempotency-key': randomUUID() };
  expect((await post('/orders', { item: 'book', quantity: 2 }, key)).status).toBe(201);
  const before = runs();
  const reused = await post('/orders', { item: 'book', quantity: 3 }, key);
  expectProblem(reused, 422, 'key-reused');
  expect(runs()).toBe(before);
});

it('answers 400 with a problem document when the key is missing', async () => {
  const before = runs();
  const missing = await post('/orders', { item: 'book', quantity: 2 });
  expectProblem(missing, 400, 'missing-key');
  expect(runs()).toBe(before);
});

it('transactional mode: 20 parallel duplicates write one row and get one response', async () => {
  const reference = randomUUID();
  const key = { 'idempotency-key': randomUUID() };
  const responses = await Promise.all(
    Array.from({ length: 20 }, () => post('/payments', { reference, amount: 500 }, key)),
  );
  expect(await count('payments WHERE reference = $1', [reference])).toBe(1);
  expect(responses[0].status).toBe(201);
  expect(JSON.parse(responses[0].body)).toMatchObject({ reference, amount: 500 });
  for (const response of responses) {
    expect({ status: response.status, body: response.body }).toEqual({ status: 201, body: responses[0].body });
  }
  expect(responses.filter((response) => response.replayed === 'true')).toHaveLength(19);
});

it.each([
  ['/orders', { item: 'book', quantity: 0 }, { item: 'book', quantity: 1 }],
  ['/payments', { reference: randomUUID(), amount: -5 }, { reference: randomUUID(), amount: 5 }],
])('a pipe rejection on %s stores nothing, and the key then works', async (path, invalid, valid) => {
  const key = { 'idempotency-key': randomUUID() };
  const records = await count('idempotency_keys');
  const rejected = await post(path, invalid, key);
  expect(rejected.status).toBe(400);
  expect(JSON.parse(rejected.body).message).toMatch(/must be a positive integer/);
  expect(await count('idempotency_keys')).toBe(records);
  const accepted = await post(path, valid, key);
  expect(accepted.status).toBe(201);
  expect(accepted.replayed).toBeNull();
  expect(await count('idempotency_keys')).toBe(records + 1);
});
