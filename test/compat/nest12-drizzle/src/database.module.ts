import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import pg from 'pg';

/** Drizzle on the application's pool: for code that runs outside an idempotent transaction. */
export const DB = Symbol('DB');
export type Database = NodePgDatabase;

/** The application's one node-postgres pool, shared with the idempotency store. */
@Module({})
export class DatabaseModule implements OnApplicationShutdown {
  constructor(@Inject(pg.Pool) private readonly pool: pg.Pool) {}

  static forUrl(connectionString: string): DynamicModule {
    return {
      module: DatabaseModule,
      providers: [
        { provide: pg.Pool, useFactory: () => new pg.Pool({ connectionString, max: 10 }) },
        { provide: DB, useFactory: (pool: pg.Pool) => drizzle({ client: pool }), inject: [pg.Pool] },
      ],
      exports: [pg.Pool, DB],
    };
  }

  onApplicationShutdown() {
    return this.pool.end();
  }
}
