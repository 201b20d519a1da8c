import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Global, Injectable, Module, type INestApplicationContext, type OnModuleInit } from '@nestjs/common';
import { Interval } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataSource, type EntityManager } from 'typeorm';
import {
  currentIdempotentCall,
  type IdempotentCall,
  IdempotencyKeyReuseError,
  IdempotencyModule,
  IdempotencyStoreUnavailableError,
  IdempotencyService,
  IdempotentMethod,
  IdempotentTransaction,
  InvalidIdempotencyInputError,
  MissingMethodKeyError,
  RequestInProgressError,
  ResponseNotReplayableError,
} from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, EFFECT_INSERT, effectCount } from '../support/effects.js';

/** A provider whose methods are made idempotent by the method wrapper. */
@Injectable()
class Billing {
  constructor(
    private readonly dataSource: DataSource,
    private readonly transaction: IdempotentTransaction,
    private readonly idempotency: IdempotencyService,
  ) {}

  @IdempotentMethod({ key: (invoice: { id: string }) => invoice.id, concurrency: 'wait' })
  async charge(invoice: { id: string; amount: number }): Promise<{ charged: number; at: Date }> {
    await sleep(50);
    await this.dataSource.query(EFFECT_INSERT, ['charge', invoice.id]);
    return { charged: invoice.amount, at: new Date() };
  }

  @IdempotentMethod({ key: (id: string) => id, transactional: true, payload: (_id: string, amount: number) => amount })
  async refund(id: string, amount: number, fail = false): Promise<number> {
    await this.transaction.manager.query(EFFECT_INSERT, ['refund', id]);
    if (fail) throw new Error('the refund failed after its write');
    return amount;
  }

  /** Posts to a ledger through an idempotent call of its own when given a ledger key. */
  @IdempotentMethod({ key: (id: string) => id, concurrency: 'skip' })
  async settle(id: string, ledgerKey?: string): Promise<string> {
    if (ledgerKey) await this.idempotency.run({ key: ledgerKey, name: 'ledger' }, () => 'posted');
    await sleep(100);
    return 'settled';
  }

  /** What each run saw as its call: at its start, and after sleeping past its tick's window. */
  readonly reports: Array<{ atStart?: IdempotentCall; afterSleep?: IdempotentCall; windowAfterSleep: number }> = [];

  @IdempotentMethod()
  @Interval('report', 100)
  async report(): Promise<void> {
    const atStart = currentIdempotentCall();
    await sleep(150);
    this.reports.push({
      atStart,
      afterSleep: currentIdempotentCall(),
      windowAfterSleep: Math.floor(Date.now() / 100) * 100,
    });
  }

  @IdempotentMethod({ key: (invoice: { id: string }) => invoice.id, name: 'invoice', scope: () => 'tenant-1' })
  async whoAmI(_invoice: { id: string }): Promise<IdempotentCall | undefined> {
    return Promise.resolve(currentIdempotentCall());
  }

  @IdempotentMethod({ key: () => undefined })
  async keyless(): Promise<string> {
    return Promise.resolve('ran');
  }

  @IdempotentMethod({ key: () => undefined, required: false })
  async optional(): Promise<string> {
    return Promise.resolve('ran unguarded');
  }
}

/** Workers of two queues sharing one decorated method: job ids are counted per queue, so they repeat. */
abstract class QueueWorker {
  runs = 0;

  @IdempotentMethod({ key: (job: { id: string }) => job.id })
  async handle(job: { id: string }): Promise<string> {
    this.runs++;
    return Promise.resolve(`${this.constructor.name} did ${job.id}`);
  }
}

@Injectable()
class EmailWorker extends QueueWorker {}

@Injectable()
class InvoiceWorker extends QueueWorker {}

describe('IdempotencyService.run() and @IdempotentMethod()', () => {
  let db: TestDatabase;
  let context: INestApplicationContext;
  let service: IdempotencyService;
  let billing: Billing;

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    @Module({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url, extra: { max: 10 } }),
        IdempotencyModule.forRoot({ fingerprintSecret: 'a test secret of enough bytes' }),
      ],
      providers: [Billing, EmailWorker, InvoiceWorker],
    })
    class RunModule {}
    const moduleRef = await Test.createTestingModule({ imports: [RunModule] }).compile();
    context = await moduleRef.init();
    service = context.get(IdempotencyService);
    billing = context.get(Billing);
  });

  afterAll(async () => {
    await context?.close();
    await db?.drop();
  });

  const effect = (kind: string, key: string) => () => db.pool.query(EFFECT_INSERT, [kind, key]);

  it('runs an operation once for parallel calls with one key, and gives every caller its result', async () => {
    const key = randomUUID();
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        service.run({ key, name: 'send-receipt', concurrency: 'wait' }, async () => {
          await effect('receipt', key)();
          await sleep(30);
          return { sent: true, key };
        }),
      ),
    );
    expect(await effectCount(db.pool, 'receipt', key)).toBe(1);
    expect(results).toEqual(Array.from({ length: 20 }, () => ({ sent: true, key })));
  });

  it('returns the stored result, as JSON makes it, to the first call and to a later repeat', async () => {
    const key = randomUUID();
    const at = new Date('2026-12-01T10:00:00.000Z');
    const first = await service.run({ key, name: 'stamp' }, async () => {
      await effect('stamp', key)();
      return { at };
    });
    expect(first).toEqual({ at: '2026-12-01T10:00:00.000Z' });
    const repeat = await service.run({ key, name: 'stamp' }, () => ({ at: new Date() }));
    expect(repeat).toEqual({ at: '2026-12-01T10:00:00.000Z' });
    expect(await effectCount(db.pool, 'stamp', key)).toBe(1);
  });

  it('keeps names and scopes apart: the same key is another operation under another name or scope', async () => {
    const key = randomUUID();
    const names = await Promise.all(['a', 'b'].map((name) => service.run({ key, name }, () => name)));
    const scopes = await Promise.all(
      ['tenant-1', 'tenant-2'].map((scope) => service.run({ key, name: 'a', scope }, () => scope)),
    );
    expect(names).toEqual(['a', 'b']);
    expect(scopes).toEqual(['tenant-1', 'tenant-2']);
  });

  it('refuses a repeat with another payload, without running it', async () => {
    const key = randomUUID();
    await service.run({ key, name: 'pay', payload: { amount: 100 } }, effect('pay', key));
    await expect(
      service.run({ key, name: 'pay', payload: { amount: 999 } }, effect('pay', key)),
    ).rejects.toBeInstanceOf(IdempotencyKeyReuseError);
    expect(await effectCount(db.pool, 'pay', key)).toBe(1);
  });

  it('refuses a payload that JSON would write as {} whatever it holds (a Map), without running', async () => {
    const key = randomUUID();
    const pay = (cents: number) =>
      service.run({ key, name: 'pay-map', payload: new Map([['cents', cents]]) }, async () => {
        await effect('pay-map', key)();
        return cents;
      });
    await expect(pay(5)).rejects.toThrow(/Map or Set/);
    await expect(pay(500)).rejects.toThrow(/Map or Set/);
    expect(await effectCount(db.pool, 'pay-map', key)).toBe(0);
  });

  it('stores nothing when the operation throws: the next call runs it', async () => {
    const key = randomUUID();
    await expect(
      service.run({ key, name: 'flaky' }, () => {
        throw new Error('the mail server said no');
      }),
    ).rejects.toThrow('the mail server said no');
    expect(await service.run({ key, name: 'flaky' }, () => 'second try')).toBe('second try');
    expect(await service.run({ key, name: 'flaky' }, () => 'third try')).toBe('second try');
  });

  it('returns a result JSON cannot hold to its caller, and answers repeats with ResponseNotReplayableError', async () => {
    // The operation has run (in transactional mode, its writes commit): its caller gets its
    // result, as with one over maxResultBytes, rather than an error for an effect that happened.
    for (const transactional of [false, true]) {
      const key = randomUUID();
      const kind = `bigint-${transactional}`;
      const count = async (manager?: EntityManager) => {
        if (manager) await manager.query(EFFECT_INSERT, [kind, key]);
        else await db.pool.query(EFFECT_INSERT, [kind, key]);
        return { total: 12n };
      };
      expect(await service.run({ key, name: kind, transactional }, count)).toEqual({ total: 12n });
      await expect(service.run({ key, name: kind, transactional }, count)).rejects.toBeInstanceOf(
        ResponseNotReplayableError,
      );
      expect(await effectCount(db.pool, kind, key)).toBe(1);
    }
  });

  it("answers a duplicate with RequestInProgressError in 'reject' mode while the first runs", async () => {
    const key = randomUUID();
    const first = service.run({ key, name: 'slow' }, async () => {
      await sleep(300);
      return 'first';
    });
    await sleep(50);
    await expect(service.run({ key, name: 'slow' }, () => 'second')).rejects.toBeInstanceOf(RequestInProgressError);
    expect(await first).toBe('first');
  });

  it("commits a transactional operation's writes with its result, or rolls both back", async () => {
    const key = randomUUID();
    const write = (manager: EntityManager) => manager.query(EFFECT_INSERT, ['tx', key]);
    await expect(
      service.run({ key, name: 'tx', transactional: true }, async (manager) => {
        await write(manager);
        throw new Error('after the write');
      }),
    ).rejects.toThrow('after the write');
    expect(await effectCount(db.pool, 'tx', key)).toBe(0);
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        service.run({ key, name: 'tx', transactional: true, concurrency: 'wait' }, async (manager) => {
          await write(manager);
          return 'committed';
        }),
      ),
    );
    expect(results).toEqual(Array.from({ length: 10 }, () => 'committed'));
    expect(await effectCount(db.pool, 'tx', key)).toBe(1);
  });

  it('keeps quotes, backslashes and SQL in keys, names and scopes of transactional operations as they are', async () => {
    // A transactional claim travels as one simple query, its values as SQL literals.
    const hostile = ["O'Reilly", 'back\\slash\\', "\\'; DROP TABLE effects; --", "$1 $$ E'x'", 'ünï ✓ 🙂'];
    for (const text of hostile) {
      const options = { key: text, name: text, scope: text, transactional: true as const };
      const run = () =>
        service.run(options, async (manager) => {
          await manager.query(EFFECT_INSERT, ['hostile', text]);
          return text;
        });
      expect(await run()).toBe(text);
      expect(await run()).toBe(text);
      expect(await effectCount(db.pool, 'hostile', text)).toBe(1);
      const { rows } = await db.pool.query(
        'SELECT scope, route, idempotency_key, status FROM idempotency_keys WHERE idempotency_key = $1',
        [text],
      );
      expect(rows).toEqual([{ scope: text, route: text, idempotency_key: text, status: 'completed' }]);
    }
    expect(await effectCount(db.pool, 'hostile', "O'Reilly")).toBe(1);
  });

  it('keeps a lease-mode operation nested in a transactional one out of the outer transaction', async () => {
    // The inner record commits at once, while the outer transaction may still roll back. Had
    // the inner operation written through the outer transaction, a rollback would undo its
    // write and keep its completed record: every retry would replay it, and the write would
    // be lost for good.
    const transaction = context.get(IdempotentTransaction);
    const outer = randomUUID();
    const inner = randomUUID();
    const attempt = () =>
      service.run({ key: outer, name: 'order', transactional: true }, async () => {
        await service.run({ key: inner, name: 'reserve' }, async () => {
          await transaction.manager.query(EFFECT_INSERT, ['reserve', inner]);
        });
        throw new Error('the order failed after the reservation');
      });
    await expect(attempt()).rejects.toThrow(/No idempotency transaction here/);
    await expect(attempt()).rejects.toThrow(/No idempotency transaction here/);
    // Never a completed inner record whose write is gone.
    expect(await service.find({ scope: '', method: 'call', route: 'reserve', key: inner })).toBeNull();
    expect(await effectCount(db.pool, 'reserve', inner)).toBe(0);
    const seen = await service.run({ key: randomUUID(), name: 'order', transactional: true }, async (manager) => {
      const nested = await service.run({ key: randomUUID(), name: 'reserve' }, (...args: unknown[]) => ({
        active: transaction.active,
        handed: args[0] !== undefined,
      }));
      return { nested, outerStillActive: transaction.active && transaction.manager === manager };
    });
    expect(seen).toEqual({ nested: { active: false, handed: false }, outerStillActive: true });
  });

  it('refuses keys, names and scopes that cannot identify an operation, and stores nothing', async () => {
    for (const options of [
      { key: '', name: 'x' },
      { key: 'k', name: '' },
      { key: 'a\0b', name: 'x' },
      { key: 'caf\ud800', name: 'x' },
      { key: 'k'.repeat(513), name: 'x' },
      { key: 42 as unknown as string, name: 'x' },
      { key: 'k', name: 'x', scope: 'a\0' },
    ]) {
      await expect(service.run(options, effect('invalid', 'x'))).rejects.toBeInstanceOf(InvalidIdempotencyInputError);
    }
    expect(await effectCount(db.pool, 'invalid')).toBe(0);
    const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM idempotency_keys WHERE route = 'x'");
    expect(rows[0].n).toBe(0);
  });

  it('serves run() called before the application has initialised the service', async () => {
    // A provider of a global module listed before IdempotencyModule: its onModuleInit runs first.
    const seeded: string[] = [];
    @Injectable()
    class Seeder implements OnModuleInit {
      constructor(private readonly idempotency: IdempotencyService) {}
      async onModuleInit(): Promise<void> {
        seeded.push(await this.idempotency.run({ key: 'seed', name: 'seed' }, () => 'seeded'));
      }
    }
    @Global()
    @Module({ providers: [Seeder] })
    class SeedModule {}
    const { MemoryIdempotencyStore } = await import('../../lib/index.js');
    @Module({ imports: [SeedModule, IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })] })
    class Root {}
    const moduleRef = await Test.createTestingModule({ imports: [Root] }).compile();
    // Also before init() at all: a test that forgot it, a script that only compiled the module.
    expect(await moduleRef.get(IdempotencyService).run({ key: 'early', name: 'early' }, () => 'ran')).toBe('ran');
    await moduleRef.init();
    await moduleRef.close();
    expect(seeded).toEqual(['seeded']);
  });

  it('refuses a transactional run() on a store without transactions, rather than answer store-unavailable', async () => {
    // A configuration error (the memory store of unit tests): not an outage to retry after a second.
    const { MemoryIdempotencyStore } = await import('../../lib/index.js');
    @Module({ imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })] })
    class MemoryRoot {}
    const moduleRef = await Test.createTestingModule({ imports: [MemoryRoot] }).compile();
    const memory = (await moduleRef.init()).get(IdempotencyService);
    try {
      const attempt = memory.run({ key: 'k', name: 'memory-tx', transactional: true }, () => 'ran');
      await expect(attempt).rejects.toThrow(/MemoryIdempotencyStore has no transactions/);
      await expect(attempt).rejects.not.toBeInstanceOf(IdempotencyStoreUnavailableError);
    } finally {
      await moduleRef.close();
    }
  });

  describe('@IdempotentMethod()', () => {
    it('runs a provider method once per key for parallel calls, each caller getting the result', async () => {
      const id = randomUUID();
      const results = await Promise.all(Array.from({ length: 10 }, () => billing.charge({ id, amount: 5 })));
      expect(await effectCount(db.pool, 'charge', id)).toBe(1);
      expect(new Set(results.map((result) => JSON.stringify(result))).size).toBe(1);
      const record = await db.pool.query('SELECT method, route FROM idempotency_keys WHERE idempotency_key = $1', [id]);
      expect(record.rows).toEqual([{ method: 'call', route: 'Billing.charge' }]);
    });

    it("shares the method's transaction through IdempotentTransaction and checks the payload", async () => {
      const id = randomUUID();
      await expect(billing.refund(id, 10, true)).rejects.toThrow('the refund failed after its write');
      expect(await effectCount(db.pool, 'refund', id)).toBe(0);
      expect(await billing.refund(id, 10)).toBe(10);
      expect(await billing.refund(id, 10)).toBe(10);
      expect(await effectCount(db.pool, 'refund', id)).toBe(1);
      await expect(billing.refund(id, 11)).rejects.toBeInstanceOf(IdempotencyKeyReuseError);
    });

    it("with concurrency 'skip', skips a call while another holds its key, but not a failure of its own", async () => {
      const id = randomUUID();
      const first = billing.settle(id);
      await sleep(50);
      expect(await billing.settle(id)).toBeUndefined();
      expect(await first).toBe('settled');

      // The method's own idempotent call meets a busy key: that is its failure, not a duplicate of it.
      const ledgerKey = randomUUID();
      const holder = service.run({ key: ledgerKey, name: 'ledger' }, () => sleep(300));
      await sleep(50);
      const other = randomUUID();
      await expect(billing.settle(other, ledgerKey)).rejects.toBeInstanceOf(RequestInProgressError);
      await holder;
      // Its key was released, not skipped for good.
      expect(await billing.settle(other)).toBe('settled');
    });

    it('keeps apart the calls of two classes that inherit one decorated method', async () => {
      const [emails, invoices] = [context.get(EmailWorker), context.get(InvoiceWorker)];
      const job = { id: randomUUID() };
      expect(await emails.handle(job)).toBe(`EmailWorker did ${job.id}`);
      expect(await invoices.handle(job)).toBe(`InvoiceWorker did ${job.id}`);
      expect(await invoices.handle(job)).toBe(`InvoiceWorker did ${job.id}`);
      expect([emails.runs, invoices.runs]).toEqual([1, 1]);
      const { rows } = await db.pool.query(
        'SELECT route FROM idempotency_keys WHERE idempotency_key = $1 ORDER BY route',
        [job.id],
      );
      expect(rows).toEqual([{ route: 'EmailWorker.handle' }, { route: 'InvoiceWorker.handle' }]);
    });

    it('tells the running method the tick it was claimed for, however long it runs', async () => {
      await billing.report();
      const [{ atStart, afterSleep, windowAfterSleep }] = billing.reports;
      expect(atStart).toEqual({
        name: 'Billing.report',
        key: atStart!.tick!.toISOString(),
        scope: '',
        tick: expect.any(Date),
      });
      expect(afterSleep).toEqual(atStart);
      // The clock, read again after the sleep, is in a later tick than the claimed one.
      expect(windowAfterSleep).toBeGreaterThan(atStart!.tick!.getTime());
      const record = await db.pool.query("SELECT idempotency_key FROM idempotency_keys WHERE route = 'Billing.report'");
      expect(record.rows).toEqual([{ idempotency_key: atStart!.key }]);
      expect(currentIdempotentCall()).toBeUndefined();
    });

    it('tells a keyed method its key, name and scope (and no tick)', async () => {
      const id = randomUUID();
      expect(await billing.whoAmI({ id })).toEqual({ name: 'invoice', key: id, scope: 'tenant-1' });
    });

    it('refuses a call without a key, unless the method says required: false', async () => {
      await expect(billing.keyless()).rejects.toBeInstanceOf(MissingMethodKeyError);
      expect(await billing.optional()).toBe('ran unguarded');
    });

    it('refuses to start an application with a method that has no key source', async () => {
      @Injectable()
      class NoKey {
        @IdempotentMethod()
        async run(): Promise<void> {}
      }
      @Module({ providers: [NoKey] })
      class NoKeyModule {}
      await expect(bootWithMemoryStore(NoKeyModule)).rejects.toThrow(/NoKey\.run: give it a "key"/);
    });

    it('checks the options of a method at start-up, not on its first call', async () => {
      @Injectable()
      class ShortLease {
        @IdempotentMethod({ key: (id: string) => id, leaseMs: 10 })
        async run(_id: string): Promise<void> {}
      }
      @Injectable()
      class TransactionalOnMemory {
        @IdempotentMethod({ key: (id: string) => id, transactional: true })
        async run(_id: string): Promise<void> {}
      }
      @Module({ providers: [ShortLease] })
      class ShortLeaseModule {}
      @Module({ providers: [TransactionalOnMemory] })
      class TransactionalModule {}
      await expect(bootWithMemoryStore(ShortLeaseModule)).rejects.toThrow(/ShortLease\.run: "leaseMs" must be/);
      await expect(bootWithMemoryStore(TransactionalModule)).rejects.toThrow(
        /TransactionalOnMemory\.run is transactional, but MemoryIdempotencyStore has no transactions/,
      );
    });

    it('checks providers made by a factory or given as a value, as it checks classes', async () => {
      class Keyless {
        @IdempotentMethod()
        async run(): Promise<void> {}
      }
      @Module({ providers: [{ provide: 'BY_FACTORY', useFactory: () => new Keyless() }] })
      class FactoryModule {}
      await expect(bootWithMemoryStore(FactoryModule)).rejects.toThrow(/Keyless\.run: give it a "key"/);
      @Module({ providers: [{ provide: 'BY_VALUE', useValue: new Keyless() }] })
      class ValueModule {}
      await expect(bootWithMemoryStore(ValueModule)).rejects.toThrow(/Keyless\.run: give it a "key"/);
    });

    it('refuses required: false on a method made transactional by the module-wide default', async () => {
      @Injectable()
      class Optional {
        @IdempotentMethod({ key: () => undefined, required: false })
        async run(): Promise<void> {}
      }
      @Module({
        imports: [
          TypeOrmModule.forRoot({ type: 'postgres', url: db.url }),
          IdempotencyModule.forRoot({ fingerprintSecret: 'a test secret of enough bytes', transactional: true }),
        ],
        providers: [Optional],
      })
      class TransactionalByDefault {}
      const moduleRef = await Test.createTestingModule({ imports: [TransactionalByDefault] }).compile();
      await expect(moduleRef.init()).rejects.toThrow(/Optional\.run is transactional with required: false/);
      await moduleRef.close().catch(() => undefined);
    });
  });
});

async function bootWithMemoryStore(module: unknown): Promise<void> {
  const { MemoryIdempotencyStore } = await import('../../lib/index.js');
  @Module({ imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })] })
  class Root {}
  const moduleRef = await Test.createTestingModule({ imports: [Root, module as never] }).compile();
  const app = await moduleRef.init().catch(async (error: unknown) => {
    await moduleRef.close().catch(() => undefined);
    throw error;
  });
  await app.close();
}
