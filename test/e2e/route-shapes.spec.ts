import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { VersioningType } from '@nestjs/common';
import { RouterModule } from '@nestjs/core';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post, rawRequest, send } from '../support/http.js';
import { expectProblem } from '../support/problems.js';
import {
  AController,
  AdminHostController,
  AdminModule,
  appModule,
  BController,
  bootError,
  calls,
  DecoratedService,
  DocsController,
  WebsocketHandlerDecorated,
  WebsocketHandlerUnderClass,
  PublicModule,
  RefundController,
  SafeMethodDecorated,
  TenantHostController,
  VersionedController,
} from '../support/shapes-app.js';
import { type AppSetup, PLATFORMS, type RunningApp, startApp } from '../support/test-app.js';

/**
 * Route shapes in which one handler function serves several routes, or several handlers
 * serve one path: each served route must have records of its own, with the route as served
 * (prefixes, versions, host), and must replay its own response.
 */
describe.each(PLATFORMS)('route shapes (%s)', (platform) => {
  let db: TestDatabase;

  const records = async (key: string) =>
    (
      await db.pool.query(
        'SELECT route, response FROM idempotency_keys WHERE idempotency_key = $1 ORDER BY route COLLATE "C"',
        [key],
      )
    ).rows;

  /** Starts an app for one describe block and closes it afterwards. */
  const serve = (controllers: unknown[], setup: AppSetup = {}, imports: unknown[] = []) => {
    const app = {} as { base: string; running?: RunningApp };
    beforeAll(async () => {
      app.running = await startApp(appModule(db.url, controllers, imports), platform, setup);
      app.base = app.running.url;
    });
    afterAll(async () => {
      await app.running?.close();
    });
    return app;
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db?.drop();
  });

  describe('one application without prefixes', () => {
    const app = serve([AController, BController, RefundController, DocsController]);

    it('gives a method inherited by two controllers one record per controller, each replaying its own response', async () => {
      const key = randomUUID();
      const [a, b] = [calls.count('AController'), calls.count('BController')];
      const firstA = await post(app.base, '/a', { key, body: { same: true } });
      const firstB = await post(app.base, '/b', { key, body: { same: true } });
      expect([firstA.status, firstB.status]).toEqual([201, 201]);
      expect(firstA.json.controller).toBe('AController');
      expect(firstB.json.controller).toBe('BController');
      expect([calls.count('AController'), calls.count('BController')]).toEqual([a + 1, b + 1]);
      expect((await records(key)).map((r) => r.route)).toEqual(['/a', '/b']);

      const retryA = await post(app.base, '/a', { key, body: { same: true } });
      const retryB = await post(app.base, '/b', { key, body: { same: true } });
      expect(retryA.headers.get('idempotent-replayed')).toBe('true');
      expect(retryB.headers.get('idempotent-replayed')).toBe('true');
      expect(retryA.text).toBe(firstA.text);
      expect(retryB.text).toBe(firstB.text);
      expect([calls.count('AController'), calls.count('BController')]).toEqual([a + 1, b + 1]);
    });

    it("applies each controller's own class-level options to the inherited method", async () => {
      // /a rejects a parallel duplicate (module default); /b was declared with concurrency: 'wait'.
      const keyA = randomUUID();
      const slowA = post(app.base, '/a', { key: keyA, body: { delayMs: 400 } });
      await sleep(100);
      expectProblem(await post(app.base, '/a', { key: keyA, body: { delayMs: 400 } }), 409, 'request-in-progress');
      expect((await slowA).status).toBe(201);

      const keyB = randomUUID();
      const before = calls.count('BController');
      const slowB = post(app.base, '/b', { key: keyB, body: { delayMs: 400 } });
      await sleep(100);
      const waited = await post(app.base, '/b', { key: keyB, body: { delayMs: 400 } });
      const first = await slowB;
      expect(waited.status).toBe(201);
      expect(waited.text).toBe(first.text);
      expect(calls.count('BController')).toBe(before + 1);
    });

    it('counts path parameters: one key on /orders/1/refund and /orders/2/refund is 422', async () => {
      const key = randomUUID();
      expect((await post(app.base, '/orders/1/refund', { key, body: {} })).status).toBe(201);
      const before = calls.count('refund');
      expectProblem(await post(app.base, '/orders/2/refund', { key, body: {} }), 422, 'key-reused');
      expect(calls.count('refund')).toBe(before);
    });

    it('lets GET through a class-wide @Idempotent() untouched, and guards its POST', async () => {
      const before = calls.count('docs-get');
      for (const key of [undefined, randomUUID()]) {
        const read = await send(app.base, 'GET', '/docs', { key });
        expect(read.status).toBe(200);
        expect(read.headers.get('idempotent-replayed')).toBeNull();
      }
      expect(calls.count('docs-get')).toBe(before + 2);
      expect(
        (await db.pool.query("SELECT count(*)::int AS n FROM idempotency_keys WHERE method = 'GET'")).rows[0].n,
      ).toBe(0);

      const runs = calls.count('docs-post');
      expectProblem(await post(app.base, '/docs'), 400, 'missing-key');
      expect(calls.count('docs-post')).toBe(runs);
      const key = randomUUID();
      expect((await post(app.base, '/docs', { key })).status).toBe(201);
      expect((await post(app.base, '/docs', { key })).headers.get('idempotent-replayed')).toBe('true');
      expect(calls.count('docs-post')).toBe(runs + 1);
    });

    it('guards the POST of an @All() route under a class-wide @Idempotent(), and lets its GET through', async () => {
      const before = calls.count('docs-all');
      expect((await send(app.base, 'GET', '/docs/any')).status).toBe(200);
      expect((await send(app.base, 'GET', '/docs/any')).status).toBe(200);
      expect(calls.count('docs-all')).toBe(before + 2);
      expectProblem(await post(app.base, '/docs/any'), 400, 'missing-key');
      const key = randomUUID();
      const first = await post(app.base, '/docs/any', { key });
      const retry = await post(app.base, '/docs/any', { key });
      expect(retry.text).toBe(first.text);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(calls.count('docs-all')).toBe(before + 3);
      expect((await records(key)).map((r) => r.route)).toEqual(['/docs/any']);
    });
  });

  describe('host-based routing', () => {
    // Fastify refuses two routes with one method and path ("Method 'POST' already declared"):
    // Nest filters hosts inside the handler rather than with Fastify's host constraint. So
    // two host controllers on one path exist on Express only; a host-parameter route on both.
    const app = serve(platform === 'express' ? [AdminHostController, TenantHostController] : [TenantHostController]);
    const at = (host: string, key: string) =>
      rawRequest(app.base, '/hosted', {
        headers: { host, 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{"amount":10}',
      });

    if (platform === 'express') {
      it('gives each host controller of one path its own record', async () => {
        const key = randomUUID();
        const [admin, tenant] = [calls.count('host-admin'), calls.count('host-tenant')];
        const adminFirst = await at('admin.example.test', key);
        const acmeFirst = await at('acme.example.test', key);
        expect([adminFirst.status, acmeFirst.status]).toEqual([201, 201]);
        expect([adminFirst.json.handler, acmeFirst.json.handler]).toEqual(['host-admin', 'host-tenant']);
        expect((await records(key)).map((r) => r.route)).toEqual([
          '/hosted host=:tenant.example.test',
          '/hosted host=admin.example.test',
        ]);
        // Each host's retry replays its own response.
        expect((await at('admin.example.test', key)).text).toBe(adminFirst.text);
        expect((await at('acme.example.test', key)).text).toBe(acmeFirst.text);
        expect([calls.count('host-admin'), calls.count('host-tenant')]).toEqual([admin + 1, tenant + 1]);
      });
    }

    it("counts host parameters: another tenant's request with the same key and body is 422, never a replay", async () => {
      const key = randomUUID();
      const before = calls.count('host-tenant');
      const acme = await at('acme.example.test', key);
      expect(acme.status).toBe(201);
      const retry = await at('acme.example.test', key);
      expect(retry.headers['idempotent-replayed']).toBe('true');
      expect(retry.text).toBe(acme.text);
      expectProblem(await at('globex.example.test', key), 422, 'key-reused');
      expect(calls.count('host-tenant')).toBe(before + 1);
      expect((await records(key)).map((r) => r.route)).toEqual(['/hosted host=:tenant.example.test']);
    });
  });

  describe('global prefix and RouterModule', () => {
    const app = serve([], { configure: (nest) => void nest.setGlobalPrefix('api') }, [
      AdminModule,
      PublicModule,
      RouterModule.register([
        { path: 'admin', module: AdminModule },
        { path: 'public', module: PublicModule },
      ]),
    ]);

    it('never shares a record between /api/admin/items and /api/public/items', async () => {
      const key = randomUUID();
      const [admin, open] = [calls.count('admin-items'), calls.count('public-items')];
      const adminFirst = await post(app.base, '/api/admin/items', { key, body: { n: 1 } });
      const publicFirst = await post(app.base, '/api/public/items', { key, body: { n: 1 } });
      expect(adminFirst.json.handler).toBe('admin-items');
      expect(publicFirst.json.handler).toBe('public-items');
      expect((await records(key)).map((r) => r.route)).toEqual(['/api/admin/items', '/api/public/items']);
      expect((await post(app.base, '/api/admin/items', { key, body: { n: 1 } })).text).toBe(adminFirst.text);
      expect((await post(app.base, '/api/public/items', { key, body: { n: 1 } })).text).toBe(publicFirst.text);
      expect([calls.count('admin-items'), calls.count('public-items')]).toEqual([admin + 1, open + 1]);
    });
  });

  /** Two versions of one route, with the same key and body: each runs once and replays its own response. */
  const versionsApart = async (
    base: string,
    request: (version: string, key: string) => Promise<{ status: number; text: string; json: any }>,
    routes: string[],
  ) => {
    const key = randomUUID();
    const [one, two] = [calls.count('v1'), calls.count('v2')];
    const first1 = await request('1', key);
    const first2 = await request('2', key);
    expect([first1.status, first2.status]).toEqual([201, 201]);
    expect([first1.json.handler, first2.json.handler]).toEqual(['v1', 'v2']);
    expect((await request('1', key)).text).toBe(first1.text);
    expect((await request('2', key)).text).toBe(first2.text);
    expect([calls.count('v1'), calls.count('v2')]).toEqual([one + 1, two + 1]);
    expect((await records(key)).map((r) => r.route)).toEqual(routes);
  };

  describe('URI versioning', () => {
    const app = serve([VersionedController], {
      configure: (nest) => void nest.enableVersioning({ type: VersioningType.URI }),
    });

    it('keeps /v1 and /v2 apart', () =>
      versionsApart(app.base, (v, key) => post(app.base, `/v${v}/versioned`, { key, body: {} }), [
        '/v1/versioned version=1',
        '/v2/versioned version=2',
      ]));
  });

  describe('header versioning', () => {
    const app = serve([VersionedController], {
      configure: (nest) => void nest.enableVersioning({ type: VersioningType.HEADER, header: 'X-API-Version' }),
    });

    it('keeps the handlers of version 1 and 2 of one path apart', () =>
      versionsApart(
        app.base,
        (v, key) => post(app.base, '/versioned', { key, body: {}, headers: { 'x-api-version': v } }),
        ['/versioned version=1', '/versioned version=2'],
      ));
  });

  describe('media-type versioning', () => {
    const app = serve([VersionedController], {
      configure: (nest) => void nest.enableVersioning({ type: VersioningType.MEDIA_TYPE, key: 'v=' }),
    });

    it('keeps the handlers of version 1 and 2 of one path apart', () =>
      versionsApart(
        app.base,
        (v, key) => post(app.base, '/versioned', { key, body: {}, headers: { accept: `application/json;v=${v}` } }),
        ['/versioned version=1', '/versioned version=2'],
      ));
  });

  describe('start-up refusals', () => {
    it('refuses @Idempotent() on a GET handler, naming it', async () => {
      expect(await bootError(platform, [SafeMethodDecorated])).toMatch(
        /SafeMethodDecorated\.list: GET is a safe method/,
      );
    });

    it('refuses @Idempotent() on a method of a provider', async () => {
      expect(await bootError(platform, [], [DecoratedService])).toMatch(
        /DecoratedService\.charge: it is neither an HTTP route nor a message handler.*use @IdempotentMethod\(\{ key \}\)/,
      );
    });

    it('refuses @Idempotent() on a websocket handler, on the method or on its controller', async () => {
      expect(await bootError(platform, [WebsocketHandlerDecorated])).toMatch(
        /WebsocketHandlerDecorated\.charge: it is neither an HTTP route nor a message handler/,
      );
      expect(await bootError(platform, [WebsocketHandlerUnderClass])).toMatch(
        /WebsocketHandlerUnderClass\.refund: it is neither an HTTP route nor a message handler/,
      );
    });
  });
});
