import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { Kysely, PostgresDialect } from 'kysely';
import { IdempotentTransaction } from 'nestjs-idempotency-postgres';
import { Pool } from 'pg';
import type { Tables } from './schema';

export const DB = Symbol('DB');
export type Database = Kysely<Tables>;

/**
 * The application's one Kysely, on its one node-postgres pool (shared with the idempotency
 * store). Inside a transactional-mode request its connection is that request's transaction,
 * so every write the request makes through it commits with the stored response; anywhere
 * else it takes a connection from the pool.
 */
function kysely(pool: Pool, transaction: IdempotentTransaction): Database {
  return new Kysely<Tables>({
    dialect: new PostgresDialect({
      pool: {
        connect: async () => (transaction.active ? transaction.client : pool.connect()),
        // The pool belongs to DatabaseModule, which ends it at shutdown.
        end: async () => {},
      },
    }),
  });
}

@Module({})
export class DatabaseModule implements OnApplicationShutdown {
  constructor(@Inject(Pool) private readonly pool: Pool) {}

  static forUrl(connectionString: string): DynamicModule {
    return {
      module: DatabaseModule,
      providers: [
        { provide: Pool, useFactory: () => new Pool({ connectionString, max: 10 }) },
        { provide: DB, useFactory: kysely, inject: [Pool, IdempotentTransaction] },
      ],
      exports: [Pool, DB],
    };
  }

  onApplicationShutdown() {
    return this.pool.end();
  }
}
