import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Injectable, Module, type INestApplicationContext } from '@nestjs/common';
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
  IdempotencyService,
  IdempotentMethod,
  IdempotentTransaction,
  InvalidIdempotencyInputError,
  MissingMethodKeyError,
  RequestInProgressError,
} from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, EFFECT_INSERT, effectCount } from '../support/effects.js';

/** A provider whose methods are made idempotent by the method wrapper. */
@Injectable()
class Billing {
  constructor(
    private readonly dataSource: DataSource,
    private readonly transaction: IdempotentTransaction,
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
      providers: [Billing],
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

  it('returns the stored result, as JSON makes it, to a later repeat', async () => {
    const key = randomUUID();
    const at = new Date('2026-12-01T10:00:00.000Z');
    const first = await service.run({ key, name: 'stamp' }, async () => {
      await effect('stamp', key)();
      return { at };
    });
    expect(first.at).toBe(at);
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

    it('tells the running method the tick it was claimed for, however long it runs', async () => {
      await billing.report();
      const [{ atStart, afterSleep, windowAfterSleep }] = billing.reports;
      expect(atStart).toEqual({ name: 'report', key: atStart!.tick!.toISOString(), scope: '', tick: expect.any(Date) });
      expect(afterSleep).toEqual(atStart);
      // The clock, read again after the sleep, is in a later tick than the claimed one.
      expect(windowAfterSleep).toBeGreaterThan(atStart!.tick!.getTime());
      const record = await db.pool.query("SELECT idempotency_key FROM idempotency_keys WHERE route = 'report'");
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
