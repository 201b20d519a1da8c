import {
  Body,
  Controller,
  type DynamicModule,
  HttpException,
  Inject,
  Injectable,
  Module,
  Param,
  Post,
} from '@nestjs/common';
import type { PoolClient } from 'pg';
import pg from 'pg';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Idempotent,
  IdempotencyModule,
  IdempotencyService,
  IdempotentClient,
  IdempotentTransaction,
} from '../../lib/index.js';

/**
 * An application on the PostgreSQL store over a plain node-postgres Pool: no TypeORM
 * anywhere (pool-app-process.ts starts it with TypeORM made unloadable). Every effect is a
 * row of `pool_effects`, written with SQL: through the pool in lease mode, through the
 * transaction's client in transactional mode.
 */
export const POOL_EFFECTS_TABLE = `
  CREATE TABLE IF NOT EXISTS pool_effects (
    id    serial PRIMARY KEY,
    owner text NOT NULL,
    kind  text NOT NULL
  )`;

/** What a transactional request asks its handler to do, besides writing its row. */
export interface TxRequest {
  /** Throw an HttpException with this status after the write. */
  status?: number;
  /** Sleep this long after the write, before returning (a crash test kills the process here). */
  holdMs?: number;
  /** Open a nested transaction through the client (BEGIN), write in it, and end it so (or leave it open). */
  nested?: 'commit' | 'rollback' | 'open';
  /** Send COMMIT through the client with no BEGIN of its own. */
  bareCommit?: boolean;
  /** Send this text through the client with no BEGIN of its own (a COMMIT or ROLLBACK spelled otherwise). */
  bareControl?: string;
  /**
   * Open a nested transaction, catch the error of a statement in it, then COMMIT it, and
   * ROLLBACK when the COMMIT fails (as Drizzle, Kysely and hand-written code do); answer
   * with the COMMIT's error code.
   */
  commitFailedNested?: boolean;
  /** Keep writing through the client in the background, from before the handler throws (with `status`). */
  writesAfterThrow?: boolean;
  /** Keep the client after the request, for /pool/leaked. */
  keepClient?: boolean;
}

let keptClient: PoolClient | undefined;

async function insert(db: { query: PoolClient['query'] }, owner: string, kind: string): Promise<number> {
  const { rows } = await db.query<{ id: number }>(
    'INSERT INTO pool_effects (owner, kind) VALUES ($1, $2) RETURNING id',
    [owner, kind],
  );
  return rows[0].id;
}

@Injectable()
class Effects {
  constructor(private readonly transaction: IdempotentTransaction) {}

  /** A service the handler calls: it finds the request's client without being handed it. */
  writeNested(owner: string) {
    return insert(this.transaction.client, owner, 'service');
  }
}

@Controller('pool')
class PoolController {
  constructor(
    @Inject(pg.Pool) private readonly pool: pg.Pool,
    private readonly effects: Effects,
    private readonly idempotency: IdempotencyService,
  ) {}

  @Post('orders/:owner')
  @Idempotent()
  async order(@Param('owner') owner: string) {
    return { id: await insert(this.pool, owner, 'lease') };
  }

  @Post('tx/:owner')
  @Idempotent({ transactional: true, concurrency: 'wait' })
  async tx(@Param('owner') owner: string, @Body() body: TxRequest, @IdempotentClient() client: PoolClient) {
    const id = await insert(client, owner, 'tx');
    await this.effects.writeNested(owner);
    if (body.nested) {
      await client.query('BEGIN');
      await insert(client, owner, 'nested');
      if (body.nested !== 'open') await client.query(body.nested === 'commit' ? 'COMMIT' : 'ROLLBACK');
    }
    if (body.bareCommit) await client.query('COMMIT');
    if (body.bareControl) await client.query(body.bareControl);
    let commitError: string | undefined;
    if (body.commitFailedNested) {
      await client.query('BEGIN');
      try {
        await insert(client, owner, 'nested');
        await client.query('SELECT 1 / 0').catch(() => undefined);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        commitError = (error as { code?: string }).code;
      }
    }
    if (body.writesAfterThrow) {
      void (async () => {
        for (;;) await insert(client, owner, 'late');
      })().catch(() => undefined);
      await sleep(20);
    }
    if (body.keepClient) keptClient = client;
    if (body.holdMs) {
      console.log(`holding ${owner}`);
      await sleep(body.holdMs);
    }
    if (body.status) throw new HttpException({ message: 'refused', id }, body.status);
    return { id, ...(commitError !== undefined && { commitError }) };
  }

  /** Uses the client a finished request left behind. */
  @Post('leaked')
  async leaked() {
    try {
      await keptClient!.query('SELECT 1');
      return { refused: false };
    } catch (error) {
      return { refused: true, message: (error as Error).message };
    }
  }

  /** Sends a pg.Query (a Submittable, as a cursor is) on the client a finished request left behind. */
  @Post('leaked-submittable')
  async leakedSubmittable() {
    const query = keptClient!.query(new pg.Query('SELECT 1'));
    const [error] = (await once(query, 'error')) as [Error];
    return { refused: true, message: error.message };
  }

  /** A transactional run(): its first argument has no EntityManager behind it here, its second is the client. */
  @Post('run/:owner/:key')
  async run(@Param('owner') owner: string, @Param('key') key: string) {
    return this.idempotency.run(
      { scope: owner, name: 'pool-run', key, transactional: true },
      async (manager, client) => {
        let managerError: string | undefined;
        try {
          manager.getRepository('anything');
        } catch (error) {
          managerError = (error as Error).message;
        }
        return { id: await insert(client, owner, 'run'), managerError };
      },
    );
  }
}

export interface PoolAppOptions {
  databaseUrl: string;
  leaseMs?: number;
}

/** The application's own pool, in a module of its own that IdempotencyModule's `pool` factory imports too. */
@Module({})
class DatabaseModule {}

@Module({})
export class PoolAppModule {
  static forRoot({ databaseUrl, leaseMs }: PoolAppOptions): DynamicModule {
    const database: DynamicModule = {
      module: DatabaseModule,
      providers: [
        {
          provide: pg.Pool,
          useFactory: () => {
            const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
            pool.on('error', () => {});
            return pool;
          },
        },
      ],
      exports: [pg.Pool],
    };
    return {
      module: PoolAppModule,
      imports: [
        database,
        IdempotencyModule.forRoot({
          scope: () => 'pool-app',
          ...(leaseMs !== undefined && { leaseMs }),
          pool: { imports: [database], inject: [pg.Pool], useFactory: (pool: pg.Pool) => pool },
        }),
      ],
      controllers: [PoolController],
      providers: [Effects],
    };
  }
}
