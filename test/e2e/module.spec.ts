import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  type CanActivate,
  Controller,
  type ExecutionContext,
  Injectable,
  Module,
  Post,
  Res,
  UseGuards,
} from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { DataSource } from 'typeorm';
import {
  Idempotent,
  type IdempotencyModuleOptions,
  IdempotencyModule,
  MemoryIdempotencyStore,
} from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';
import { startApp } from '../support/test-app.js';

let runs = 0;

/** Stands in for authentication: the default scope reads the principal's id. */
@Injectable()
class SignedIn implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    context.switchToHttp().getRequest().user = { id: 'user-1' };
    return true;
  }
}

@Controller()
@UseGuards(SignedIn)
class CounterController {
  @Post('count')
  @Idempotent()
  count() {
    return { runs: ++runs };
  }
}

@Controller()
class WritesResponseItself {
  @Post('raw')
  @Idempotent()
  raw(@Res() response: { send(body: string): void }) {
    response.send('hand-written');
  }
}

@Controller()
class TransactionalController {
  @Post('tx')
  @Idempotent({ transactional: true })
  create() {
    return {};
  }
}

@Injectable()
class Settings {
  readonly header = 'X-Request-Key';
}

@Module({ providers: [Settings], exports: [Settings] })
class SettingsModule {}

@Injectable()
class OptionsFactory {
  constructor(private readonly settings: Settings) {}
  createIdempotencyOptions(): IdempotencyModuleOptions {
    return { headerName: this.settings.header };
  }
}

const appWith = (imports: unknown[], controllers: unknown[] = [CounterController]) => {
  @Module({ imports: imports as never[], controllers: controllers as never[] })
  class TestModule {}
  return TestModule;
};

describe('IdempotencyModule wiring', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db?.drop();
  });

  const replays = async (url: string, header = 'idempotency-key') => {
    const key = randomUUID();
    const first = await post(url, '/count', { headers: { [header]: key } });
    const retry = await post(url, '/count', { headers: { [header]: key } });
    expect(first.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.text).toBe(first.text);
  };

  it('forRootAsync with useFactory, inject and imports', async () => {
    const running = await startApp(
      appWith([
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url }),
        IdempotencyModule.forRootAsync({
          imports: [SettingsModule],
          inject: [Settings],
          useFactory: (settings: Settings) => ({ headerName: settings.header }),
        }),
      ]),
      'express',
    );
    try {
      await replays(running.url, 'x-request-key');
      expect((await post(running.url, '/count', { key: randomUUID() })).status).toBe(400);
    } finally {
      await running.close();
    }
  });

  it('forRootAsync with useClass', async () => {
    const running = await startApp(
      appWith([
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url }),
        IdempotencyModule.forRootAsync({ imports: [SettingsModule], useClass: OptionsFactory }),
      ]),
      'express',
    );
    try {
      await replays(running.url, 'x-request-key');
    } finally {
      await running.close();
    }
  });

  it('uses a named DataSource', async () => {
    const running = await startApp(
      appWith([
        TypeOrmModule.forRoot({ name: 'ledger', type: 'postgres', url: db.url }),
        IdempotencyModule.forRoot({ dataSource: 'ledger' }),
      ]),
      'fastify',
    );
    try {
      await replays(running.url);
    } finally {
      await running.close();
    }
  });

  it('sends prepared statements by default, and none with preparedStatements: false', async () => {
    for (const preparedStatements of [undefined, false]) {
      const running = await startApp(
        appWith([
          // One connection: the look-up below sees the session the library's statements used.
          TypeOrmModule.forRoot({ type: 'postgres', url: db.url, extra: { max: 1 } }),
          IdempotencyModule.forRoot({ preparedStatements }),
        ]),
        'express',
      );
      try {
        await replays(running.url);
        const [{ n }] = await running.app
          .get(DataSource)
          .query<{ n: number }[]>(
            "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE 'idempotency%'",
          );
        expect(n > 0).toBe(preparedStatements !== false);
      } finally {
        await running.close();
      }
    }
  });

  it('runs on the memory store without any database', async () => {
    const running = await startApp(appWith([IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })]), 'express');
    try {
      await replays(running.url);
    } finally {
      await running.close();
    }
  });

  it('runs on a pg Pool, given as it is or made by a factory with imports and inject (forRootAsync)', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 3 });
    @Module({ providers: [{ provide: pg.Pool, useValue: pool }], exports: [pg.Pool] })
    class PoolModule {}
    try {
      for (const [header, idempotency] of [
        // TransactionalController has no guard: the scope is a constant here.
        ['idempotency-key', IdempotencyModule.forRoot({ pool, scope: () => 'tests' })],
        [
          'x-request-key',
          IdempotencyModule.forRootAsync({
            pool: { imports: [PoolModule], inject: [pg.Pool], useFactory: (given: pg.Pool) => given },
            imports: [SettingsModule],
            inject: [Settings],
            useFactory: (settings: Settings) => ({ headerName: settings.header, scope: () => 'tests' }),
          }),
        ],
      ] as const) {
        const running = await startApp(appWith([idempotency], [CounterController, TransactionalController]), 'express');
        try {
          await replays(running.url, header);
          const key = randomUUID();
          expect((await post(running.url, '/tx', { headers: { [header]: key } })).status).toBe(201);
          const { rows } = await pool.query('SELECT status FROM idempotency_keys WHERE idempotency_key = $1', [key]);
          expect(rows).toEqual([{ status: 'completed' }]);
        } finally {
          await running.close();
        }
      }
      // The application owns the pool: closing the application leaves it open.
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
  });

  it('refuses a "pool" that is not a pg Pool, and a "pool" beside another store', async () => {
    const client = new pg.Client({ connectionString: db.url });
    expect(await bootError([IdempotencyModule.forRoot({ pool: client as unknown as pg.Pool })])).toMatch(
      /"pool" must be a node-postgres Pool/,
    );
    const pool = new pg.Pool({ connectionString: db.url });
    try {
      expect(() => IdempotencyModule.forRoot({ pool, dataSource: 'other' })).toThrow(
        /give one of "pool", "dataSource", not several/,
      );
      expect(() => IdempotencyModule.forRoot({ pool, store: MemoryIdempotencyStore })).toThrow(
        /give one of "store", "pool", not several/,
      );
    } finally {
      await pool.end();
    }
  });

  const bootError = async (imports: unknown[], controllers?: unknown[]) => {
    try {
      const running = await startApp(appWith(imports, controllers), 'express');
      await running.close();
    } catch (error) {
      return (error as Error).message;
    }
    throw new Error('the application started');
  };

  it('fails at start-up, naming the fix, without a DataSource', async () => {
    expect(await bootError([IdempotencyModule.forRoot()])).toMatch(
      /no TypeORM DataSource found.*TypeOrmModule\.forRoot/,
    );
  });

  it('fails at start-up when the migration has not run', async () => {
    const bare = await createTestDatabase({ migrate: false });
    try {
      const message = await bootError([
        TypeOrmModule.forRoot({ type: 'postgres', url: bare.url }),
        IdempotencyModule.forRoot(),
      ]);
      expect(message).toMatch(/idempotency_keys" does not exist.*idempotencyMigrations/);
      const pool = new pg.Pool({ connectionString: bare.url, max: 1 });
      try {
        expect(await bootError([IdempotencyModule.forRoot({ pool })])).toMatch(
          /idempotency_keys" does not exist\. Run "npx nestjs-idempotency-postgres migrate"/,
        );
      } finally {
        await pool.end();
      }
    } finally {
      await bare.drop();
    }
  });

  it('fails at start-up for a route that writes its response itself', async () => {
    const message = await bootError(
      [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })],
      [WritesResponseItself],
    );
    expect(message).toMatch(/WritesResponseItself\.raw.*@Res\(\)/);
  });

  it('fails at start-up for a transactional route on a store without transactions', async () => {
    const message = await bootError(
      [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })],
      [TransactionalController],
    );
    expect(message).toMatch(/TransactionalController\.create is transactional.*PostgreSQL store/);
  });

  // Two imports register two global interceptors: each request would be claimed twice and answer 409 to itself.
  it('fails at start-up when IdempotencyModule is imported twice', async () => {
    @Module({ imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, concurrency: 'wait' })] })
    class FeatureModule {}
    const message = await bootError([IdempotencyModule.forRoot({ store: MemoryIdempotencyStore }), FeatureModule]);
    expect(message).toMatch(/IdempotencyModule is imported 2 times\. Import IdempotencyModule\.forRoot\(\) .* once/);
  });

  it('fails at start-up for an option that cannot work', async () => {
    const message = await bootError([IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, leaseMs: 0 })]);
    expect(message).toMatch(/"leaseMs" must be a whole number from 30 to 2147483647, got 0/);
  });
});
