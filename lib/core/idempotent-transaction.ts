import { createParamDecorator, Injectable } from '@nestjs/common';
import { AsyncLocalStorage } from 'node:async_hooks';
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

function managerOrThrow(): EntityManager {
  const transaction = current.getStore()?.transaction;
  if (!transaction) {
    throw new Error(
      'No idempotency transaction here: the EntityManager is handed only to handlers of routes ' +
        'with @Idempotent({ transactional: true }) (or the module option transactional: true), ' +
        'while such a request runs.',
    );
  }
  return transaction.manager as EntityManager;
}

/**
 * The transaction of the running transactional-mode request, for services the handler
 * calls: write through `manager` and the writes commit together with the stored response.
 *
 * ```ts
 * constructor(private readonly transaction: IdempotentTransaction) {}
 * charge() { return this.transaction.manager.save(Payment, {...}); }
 * ```
 */
@Injectable()
export class IdempotentTransaction {
  /** The EntityManager of the request's transaction; throws outside a transactional route. */
  get manager(): EntityManager {
    return managerOrThrow();
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
