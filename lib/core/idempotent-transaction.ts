import { createParamDecorator, Injectable } from '@nestjs/common';
import { AsyncLocalStorage } from 'node:async_hooks';
import type { PoolClient } from 'pg';
import type { EntityManager } from 'typeorm';
import type { StoreTransaction } from '../storage/idempotency.store.js';

/** Emptied when the handler has returned: callbacks it left behind find no transaction. */
interface Scope {
  transaction?: StoreTransaction;
  /** The operation's name for the log (`POST /payments`). */
  where?: string;
}

const current = new AsyncLocalStorage<Scope>();

/** @internal Runs a transactional route's handler with its transaction in context. */
export async function runInTransaction<T>(
  transaction: StoreTransaction,
  run: () => Promise<T>,
  where?: string,
): Promise<T> {
  const scope: Scope = { transaction, where };
  try {
    return await current.run(scope, run);
  } finally {
    scope.transaction = undefined;
  }
}

/**
 * @internal Runs a lease-mode handler with no transaction in context, even when it is
 * nested in a transactional execution (a `run()` inside another, an `@IdempotentMethod()`
 * called by a transactional route): its record commits on its own, at once, so writes it
 * made through the outer transaction would be undone by that transaction's rollback while
 * its record stays completed, and every retry would replay it without the write.
 */
export function runOutsideTransaction<T>(run: () => Promise<T>): Promise<T> {
  return current.getStore()?.transaction ? current.run({}, run) : run();
}

/** @internal The name of the transactional operation whose handler is running here, if any. */
export function currentTransactionalOperation(): string | undefined {
  const scope = current.getStore();
  return scope?.transaction ? (scope.where ?? 'a transactional operation') : undefined;
}

/** @internal The EntityManager of the running transactional execution, if any. */
export function currentManager(): EntityManager | undefined {
  return current.getStore()?.transaction?.manager as EntityManager | undefined;
}

/** @internal The guarded connection of the running transactional execution, if any. */
export function currentClient(): PoolClient | undefined {
  return current.getStore()?.transaction?.client as PoolClient | undefined;
}

function transactionOrThrow(what: string): StoreTransaction {
  const transaction = current.getStore()?.transaction;
  if (!transaction) {
    throw new Error(
      `No idempotency transaction here: the ${what} is handed only to handlers of routes ` +
        'with @Idempotent({ transactional: true }) (or the module option transactional: true), ' +
        'while such a request runs.',
    );
  }
  return transaction;
}

/** @internal What using the EntityManager of a store that has none says. */
export const NO_ENTITY_MANAGER =
  'No TypeORM EntityManager: the PostgreSQL store runs on a pg Pool (the module option "pool"). ' +
  "Write through the transaction's client instead: @IdempotentClient() or IdempotentTransaction.client.";

function managerOrThrow(): EntityManager {
  const manager = transactionOrThrow('EntityManager').manager as EntityManager | undefined;
  if (!manager) throw new Error(NO_ENTITY_MANAGER);
  return manager;
}

function clientOrThrow(): PoolClient {
  return transactionOrThrow('client').client as PoolClient;
}

/**
 * The transaction of the running transactional-mode request, for services the handler
 * calls: write through `manager` (TypeORM) or `client` (node-postgres, and what wraps it),
 * and the writes commit together with the stored response.
 *
 * ```ts
 * constructor(private readonly transaction: IdempotentTransaction) {}
 * charge() { return this.transaction.manager.save(Payment, {...}); }
 * ```
 */
@Injectable()
export class IdempotentTransaction {
  /**
   * The EntityManager of the request's transaction; throws outside a transactional route,
   * and on a store that runs on a `pg` Pool (no TypeORM): use `client` there.
   */
  get manager(): EntityManager {
    return managerOrThrow();
  }

  /**
   * The request's connection as a node-postgres client, for raw SQL and for libraries that
   * wrap one (Drizzle's `drizzle(client)`, Kysely's `PostgresDialect`): writes through it
   * commit with the stored response. BEGIN, COMMIT and ROLLBACK sent through it open and
   * end a savepoint (so a wrapper's `transaction()` nests), `release()` does nothing, and it
   * refuses queries once the request's transaction has ended. Throws outside a
   * transactional route.
   */
  get client(): PoolClient {
    return clientOrThrow();
  }

  /** Whether the current code runs inside a transactional-mode request. */
  get active(): boolean {
    return current.getStore()?.transaction !== undefined;
  }
}

/**
 * The EntityManager of the request's transaction, as a handler parameter:
 * `create(@IdempotentManager() manager: EntityManager, @Body() body: Dto)`.
 */
export const IdempotentManager = createParamDecorator((): EntityManager => managerOrThrow());

/**
 * The request transaction's connection (see `IdempotentTransaction.client`), as a handler
 * parameter: `create(@IdempotentClient() client: PoolClient, @Body() body: Dto)`.
 */
export const IdempotentClient = createParamDecorator((): PoolClient => clientOrThrow());
