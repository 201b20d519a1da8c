import type { EntityManager, QueryRunner } from 'typeorm';
import type { PoolClient } from './connection.js';
import type { TransactionHost } from './transaction-host.js';

/** The parts of TypeORM's QueryRunner that track a transaction, which the store begins and ends itself. */
type TrackedRunner = Omit<QueryRunner, 'isTransactionActive'> & {
  isTransactionActive: boolean;
  transactionDepth: number;
  broadcaster: { broadcast(event: string): Promise<void> };
};

/**
 * A transaction on a TypeORM QueryRunner's connection. The runner is told of the
 * transaction as its own startTransaction() and commitTransaction() would tell it (depth,
 * subscriber events), so that the handler's manager.transaction() calls nest as savepoints
 * inside it and the DataSource's subscribers see it begin and end.
 */
export class TypeOrmTransactionHost implements TransactionHost {
  private readonly runner: TrackedRunner;

  constructor(
    runner: QueryRunner,
    readonly client: PoolClient,
  ) {
    this.runner = runner as unknown as TrackedRunner;
  }

  get manager(): EntityManager {
    return this.runner.manager;
  }

  /** TypeORM counts the handler's manager.transaction() calls; above 1, one of them is still open. */
  nestedOpen(): boolean {
    return this.runner.transactionDepth !== 1;
  }

  /** As TypeORM's startTransaction() does before its START TRANSACTION. */
  async starting(): Promise<void> {
    this.runner.isTransactionActive = true;
    try {
      await this.runner.broadcaster.broadcast('BeforeTransactionStart');
    } catch (error) {
      this.runner.isTransactionActive = false;
      throw error;
    }
  }

  async started(): Promise<void> {
    this.runner.transactionDepth = 1;
    await this.runner.broadcaster.broadcast('AfterTransactionStart');
  }

  async ended(how: 'Commit' | 'Rollback'): Promise<void> {
    if (!this.runner.isTransactionActive) return;
    this.runner.isTransactionActive = false;
    this.runner.transactionDepth = 0;
    await this.runner.broadcaster.broadcast(`AfterTransaction${how}`);
  }

  /** A broken connection was ended already (the pool discards an ended client). */
  async release(): Promise<void> {
    await this.runner.release();
  }

  /** Before committing: TypeORM's BeforeTransactionCommit subscribers. */
  committing(): Promise<void> {
    return this.runner.broadcaster.broadcast('BeforeTransactionCommit');
  }
}
