import type { Logger } from '@nestjs/common';
import pg from 'pg';

/**
 * The node-postgres Pool the library runs on with `IDEMPOTENCY_STORE=pool` (the module
 * option `pool`), apart from TypeORM's: the way an application without TypeORM gives the
 * library its database. The application owns it: main.ts ends it once the app has closed,
 * after the library's shutdown has stored what it still had to store.
 */
export function createIdempotencyPool(databaseUrl: string, logger: Logger): pg.Pool {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
  // An idle client whose server went away emits this; without a listener the process would crash.
  pool.on('error', (error) => logger.warn(`idempotency pool: an idle connection failed: ${error.message}`));
  return pool;
}
