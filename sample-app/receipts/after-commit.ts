import { Injectable, Logger } from '@nestjs/common';
import {
  DataSource,
  type EntityManager,
  type EntitySubscriberInterface,
  type QueryRunner,
  type TransactionCommitEvent,
} from 'typeorm';

const pending = new WeakMap<QueryRunner, Array<() => void>>();
const logger = new Logger('AfterCommit');

/**
 * Runs `callback` once the transaction that `manager` writes in has committed, and never
 * if it rolls back. The consumer acknowledges a message this way: acknowledged before the
 * commit, a message whose receipt then fails to commit (a crash, a lost connection) would
 * be gone with nothing written; acknowledged after, a crash in between only means a
 * redelivery, which the idempotency record answers without writing again. (If the reply
 * to COMMIT is lost with the connection, the callback does not run although the commit
 * may have happened: the message then waits for its channel to close, and comes back as
 * a duplicate.)
 */
export function afterCommit(manager: EntityManager, callback: () => void): void {
  const runner = manager.queryRunner;
  if (!runner?.isTransactionActive) throw new Error('afterCommit() needs the EntityManager of an open transaction');
  pending.set(runner, [...(pending.get(runner) ?? []), callback]);
}

/** Registers itself with the DataSource, as the NestJS docs show for TypeORM subscribers. */
@Injectable()
export class AfterCommitSubscriber implements EntitySubscriberInterface {
  constructor(dataSource: DataSource) {
    dataSource.subscribers.push(this);
  }

  afterTransactionCommit({ queryRunner }: TransactionCommitEvent): void {
    // A nested transaction's commit only releases a savepoint: the outer one is still open.
    if (queryRunner.isTransactionActive) return;
    const callbacks = pending.get(queryRunner) ?? [];
    pending.delete(queryRunner);
    for (const callback of callbacks) {
      try {
        callback();
      } catch (error) {
        // The commit happened: a failing callback must not make it look as if it had not.
        logger.error(`a callback after commit failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }
}
