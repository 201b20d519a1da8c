import type { DataSource, EntityManager } from 'typeorm';
import { currentManager } from '../core/idempotent-transaction.js';

/** The isolation levels TypeORM accepts (its `IsolationLevel`, which it keeps on an internal path). */
type IsolationLevel = 'READ UNCOMMITTED' | 'READ COMMITTED' | 'REPEATABLE READ' | 'SERIALIZABLE';

/** As `@nestjs-cls/transactional-adapter-typeorm`'s options. */
export interface IdempotentTypeOrmAdapterOptions {
  /** The injection token of the TypeORM DataSource (`DataSource`, or `getDataSourceToken(name)`). */
  dataSourceToken: unknown;
  /** Merged with the options of each `@Transactional()` / `withTransaction()`. */
  defaultTxOptions?: Partial<IdempotentTypeOrmTransactionOptions>;
}

export interface IdempotentTypeOrmTransactionOptions {
  isolationLevel: IsolationLevel;
}

/**
 * A `@nestjs-cls/transactional` adapter for TypeORM that knows the idempotency
 * transaction: a drop-in for `TransactionalAdapterTypeOrm`. Inside a transactional route
 * (`@Idempotent({ transactional: true })`, a transactional `run()` or
 * `@IdempotentMethod()`), on the same DataSource:
 *
 * - `txHost.tx` outside any `@Transactional()` is the route's EntityManager, so plain
 *   writes through it commit with the stored response, or roll back with the record;
 * - `@Transactional()` / `txHost.withTransaction()` open a savepoint inside the route's
 *   transaction instead of a transaction of their own on another connection (its isolation
 *   level is the route's: one given to them is ignored, as for any nested transaction).
 *
 * Everywhere else it behaves as the stock adapter: `txHost.tx` is the DataSource's manager
 * and `@Transactional()` opens a transaction. It is written against that package's adapter
 * interface structurally; the library does not import `@nestjs-cls/*`.
 */
export class IdempotentTransactionalAdapterTypeOrm {
  readonly connectionToken: unknown;
  readonly defaultTxOptions?: Partial<IdempotentTypeOrmTransactionOptions>;

  constructor(options: IdempotentTypeOrmAdapterOptions) {
    this.connectionToken = options.dataSourceToken;
    this.defaultTxOptions = options.defaultTxOptions;
  }

  optionsFactory = (dataSource: DataSource) => {
    /** The route's manager, when one is open in this call's context on this DataSource. */
    const idempotent = (): EntityManager | undefined => {
      const manager = currentManager();
      return manager?.connection === dataSource ? manager : undefined;
    };
    return {
      wrapWithTransaction: (
        options: Partial<IdempotentTypeOrmTransactionOptions> | undefined,
        fn: (...args: any[]) => Promise<any>,
        setClient: (client?: EntityManager) => void,
      ): Promise<any> => {
        const run = (manager: EntityManager) => {
          setClient(manager);
          return fn();
        };
        const outer = idempotent();
        // A nested transaction of TypeORM's on the route's runner is a savepoint in its transaction.
        if (outer) return outer.transaction(run);
        return options?.isolationLevel
          ? dataSource.transaction(options.isolationLevel, run)
          : dataSource.transaction(run);
      },
      wrapWithNestedTransaction: (
        _options: Partial<IdempotentTypeOrmTransactionOptions> | undefined,
        fn: (...args: any[]) => Promise<any>,
        setClient: (client?: EntityManager) => void,
        client: EntityManager,
      ): Promise<any> =>
        client.transaction((manager) => {
          setClient(manager);
          return fn();
        }),
      getFallbackInstance: (): EntityManager => idempotent() ?? dataSource.manager,
    };
  };
}
