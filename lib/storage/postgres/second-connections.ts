import { Logger } from '@nestjs/common';
import { currentTransactionalOperation } from '../../core/idempotent-transaction.js';
import type { Pool } from './connection.js';

/** One warning per operation in this window: a handler that does it does it on every request. */
const REPEAT_AFTER_MS = 60_000;

const watched = new WeakSet<object>();

/**
 * Reports a connection taken from the pool while a transactional operation's handler runs
 * (its own connection was taken before): whatever it writes (a repository of the
 * DataSource, `dataSource.query()`, a stock `@nestjs-cls/transactional` adapter) is outside
 * the operation's transaction, so it is neither exactly-once nor undone by a rollback, and
 * it holds a second pooled connection while the first is held. Logged with the operation's
 * name; a lease-mode operation nested in it runs outside its context and is not reported.
 */
export function watchSecondConnections(pool: Pool): void {
  if (watched.has(pool)) return;
  watched.add(pool);
  const logger = new Logger('Idempotency');
  const lastWarned = new Map<string, number>();
  pool.on('acquire', () => {
    const operation = currentTransactionalOperation();
    if (operation === undefined) return;
    const now = Date.now();
    if (now - (lastWarned.get(operation) ?? -Infinity) < REPEAT_AFTER_MS) return;
    lastWarned.set(operation, now);
    logger.warn(
      `${operation}: a second database connection was taken while its transaction is open; what it writes ` +
        'is outside the idempotency transaction (not undone by its rollback). Write through @IdempotentManager() ' +
        'or @IdempotentClient(), IdempotentTransaction.manager or .client, or IdempotentTransactionalAdapterTypeOrm ' +
        'for @nestjs-cls/transactional.',
    );
  });
}
