import type { EntityManager } from 'typeorm';
import type { PoolClient } from './connection.js';

/**
 * What a transactional request's connection is held through: a TypeORM QueryRunner (the
 * store on a DataSource), or the pool's client alone (the store on a `pg` Pool). The
 * transaction's own statements are the same either way; what differs is who is told of the
 * transaction and how the connection goes back.
 */
export interface TransactionHost {
  readonly client: PoolClient;
  /** TypeORM's EntityManager on this connection; undefined on a plain pool. */
  readonly manager: EntityManager | undefined;
  /** Whether a transaction the handler opened through the ORM (`manager.transaction()`) is still open. */
  nestedOpen(): boolean;
  /** Before BEGIN is sent; a host that refuses throws, and nothing is sent. */
  starting(): Promise<void>;
  /** Once BEGIN has run. */
  started(): Promise<void>;
  /** Before the completion and COMMIT are sent. */
  committing(): Promise<void>;
  /** Once COMMIT or ROLLBACK has run (or the connection was given up). */
  ended(how: 'Commit' | 'Rollback'): Promise<void>;
  /** Gives the connection back to the pool; a `broken` one is discarded instead. */
  release(broken: boolean): Promise<void>;
}

/** A transaction on a connection of a plain `pg` Pool: no one else to tell. */
export class PoolTransactionHost implements TransactionHost {
  readonly manager = undefined;

  constructor(readonly client: PoolClient) {}

  nestedOpen(): boolean {
    return false;
  }

  async starting(): Promise<void> {}

  async started(): Promise<void> {}

  async committing(): Promise<void> {}

  async ended(): Promise<void> {}

  release(broken: boolean): Promise<void> {
    this.client.release(broken);
    return Promise.resolve();
  }
}
