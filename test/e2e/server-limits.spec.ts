import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Body, Controller, HttpCode, Module, Param, Post } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyModule, IdempotentManager } from '../../lib/index.js';
import { admin, createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { PLATFORMS, startApp, type RunningApp } from '../support/test-app.js';

let runs = 0;

@Controller()
class SlowPayments {
  @Post('pay/:owner')
  @HttpCode(201)
  @Idempotent({ transactional: true, concurrency: 'wait', waitTimeoutMs: 5000 })
  async pay(
    @Param('owner') owner: string,
    @Body() body: { delayMs: number },
    @IdempotentManager() manager: EntityManager,
  ) {
    runs++;
    const [row] = await manager.query(
      "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, 1, 'EUR', 'succeeded') RETURNING id",
      [owner],
    );
    // An external call while the transaction stays open: longer than the server's idle time-out.
    await sleep(body.delayMs);
    return { id: row.id };
  }

  @Post('idle/:owner')
  @Idempotent({ transactional: true, leaseMs: 500 })
  async idle(@Body() body: { delayMs: number }) {
    runs++;
    await sleep(body.delayMs);
    return { idled: body.delayMs };
  }

  @Post('hold/:owner')
  @Idempotent({ transactional: true, waitTimeoutMs: 300 })
  async hold(@Param('owner') owner: string, @Body() body: { delayMs: number }) {
    await sleep(body.delayMs);
    return { held: owner };
  }
}

const appOn = (url: string, poolSize = 10) => {
  @Module({
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url, retryAttempts: 0, extra: { max: poolSize } }),
      IdempotencyModule.forRoot({ scope: () => 'tenant' }),
    ],
    controllers: [SlowPayments],
  })
  class LimitsModule {}
  return LimitsModule;
};

describe.each(PLATFORMS)('server-side limits (%s)', (platform) => {
  describe('time-outs set on the database, shorter than a handler', () => {
    let db: TestDatabase;
    let running: RunningApp;

    beforeAll(async () => {
      db = await createTestDatabase();
      // As a DBA might: every session of this database gets them.
      await admin(`ALTER DATABASE ${db.name} SET idle_in_transaction_session_timeout = '200ms'`);
      await admin(`ALTER DATABASE ${db.name} SET statement_timeout = '300ms'`);
      running = await startApp(appOn(db.url), platform);
    });
    afterAll(async () => {
      await running?.close();
      await db?.drop();
    });

    // idle_in_transaction_session_timeout would end the transaction while the handler
    // awaits its external call (a 503 for every slow request, and the waiting duplicates
    // would then run the handler again); statement_timeout would cancel their waits.
    it('neither ends the transaction of a slow handler nor cuts the waits of its duplicates', async () => {
      const owner = 'slow-' + randomUUID().slice(0, 8);
      const key = randomUUID();
      const before = runs;
      const responses = await Promise.all(
        Array.from({ length: 5 }, () => post(running.url, `/pay/${owner}`, { key, body: { delayMs: 800 } })),
      );
      expect(responses.map((r) => r.status)).toEqual([201, 201, 201, 201, 201]);
      expect(new Set(responses.map((r) => r.text)).size).toBe(1);
      expect(runs - before).toBe(1);
      const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM payments WHERE user_id = $1', [owner]);
      expect(rows[0].n).toBe(1);
    });

    // A key whose old record expired (or whose owner died) is claimed on the slow path; its
    // handler must get the same settings as a fresh key's.
    it('holds for a key re-claimed from an expired record too', async () => {
      const owner = 'reclaim-' + randomUUID().slice(0, 8);
      const key = randomUUID();
      await db.pool.query(
        `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, owner_token, locked_until, expires_at)
         VALUES ('tenant', 'POST', $1, $2, 'x', 'in_progress', $3, now() - interval '1 minute', now() - interval '1 minute')`,
        [`/pay/:owner`, key, randomUUID()],
      );
      const response = await post(running.url, `/pay/${owner}`, { key, body: { delayMs: 800 } });
      expect(response.status).toBe(201);
      const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM payments WHERE user_id = $1', [owner]);
      expect(rows[0].n).toBe(1);
    });

    // The lease bounds each idle stretch of a transactional request: what frees the key of
    // a host that vanished without closing its connection.
    it("ends a transaction that sits idle for longer than the route's lease, committing nothing", async () => {
      const key = randomUUID();
      const response = await post(running.url, '/idle/x', { key, body: { delayMs: 1500 } });
      expect(response.status).toBe(503);
      expect((await db.pool.query('SELECT 1 FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows).toEqual(
        [],
      );
      expect((await post(running.url, '/idle/x', { key, body: { delayMs: 0 } })).status).toBe(201);
    });
  });

  describe('a busy connection pool', () => {
    let db: TestDatabase;
    let running: RunningApp;

    beforeAll(async () => {
      db = await createTestDatabase();
      running = await startApp(appOn(db.url, 2), platform);
    });
    afterAll(async () => {
      await running?.close();
      await db?.drop();
    });

    it('bounds the wait for a pooled connection by the wait budget, then answers 503, leaking nothing', async () => {
      // Two transactional requests hold both connections for 1.5 s.
      const holders = ['a', 'b'].map((owner) =>
        post(running.url, `/hold/${owner}`, { key: randomUUID(), body: { delayMs: 1500 } }),
      );
      await sleep(200);
      const started = Date.now();
      const queued = await post(running.url, '/hold/c', { key: randomUUID(), body: { delayMs: 0 } });
      const waited = Date.now() - started;
      expect(queued.status).toBe(503);
      expect(queued.json.type).toBe('urn:nestjs-idempotency:problem:store-unavailable');
      expect(waited).toBeLessThan(1200); // 300 ms budget; the holders keep the pool for 1.5 s
      expect((await Promise.all(holders)).map((r) => r.status)).toEqual([201, 201]);
      // The connection handed over after the caller gave up went back to the pool: both still serve.
      const after = await Promise.all(
        ['d', 'e'].map((owner) => post(running.url, `/hold/${owner}`, { key: randomUUID(), body: { delayMs: 0 } })),
      );
      expect(after.map((r) => r.status)).toEqual([201, 201]);
    });
  });
});
