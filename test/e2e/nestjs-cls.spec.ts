import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createEffectsTable, effectCount } from '../support/effects.js';

const CLS_APP = fileURLToPath(new URL('../support/cls-app.js', import.meta.url));

interface Outcome {
  scenario?: string;
  key?: string;
  warning?: string;
  value?: unknown;
  error?: string;
}

/** Runs the scenarios (pairs of name and key) in the nestjs-cls application, as a process. */
function runScenarios(url: string, pairs: Array<[string, string]>): Promise<Outcome[]> {
  const child = spawn(process.execPath, [CLS_APP, ...pairs.flat()], {
    env: { ...process.env, DATABASE_URL: url },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`cls-app exited with ${code}:\n${stdout}\n${stderr}`));
      resolve(
        stdout
          .split('\n')
          .filter((line) => line.startsWith('{'))
          .map((line) => JSON.parse(line) as Outcome),
      );
    });
  });
}

/**
 * @nestjs-cls/transactional in transactional idempotent operations: with the library's
 * adapter, `txHost.tx` and `@Transactional()` write inside the idempotency transaction, so
 * their writes roll back with the record; the stock adapter, as a control, writes outside.
 */
describe('nestjs-cls bridge: IdempotentTransactionalAdapterTypeOrm', () => {
  let db: TestDatabase;
  const keys = {
    committed: randomUUID(),
    rolledBack: randomUUID(),
    twiceFailed: randomUUID(),
    stock: randomUUID(),
    outside: randomUUID(),
  };
  let outcomes: Outcome[];

  const records = async (key: string) =>
    (await db.pool.query('SELECT status FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows;
  const outcome = (scenario: string, key: string) =>
    outcomes.filter((entry) => entry.scenario === scenario && entry.key === key);

  beforeAll(async () => {
    db = await createTestDatabase();
    await createEffectsTable(db.pool);
    outcomes = await runScenarios(db.url, [
      ['record', keys.committed],
      ['record', keys.committed], // a repeat: replayed, no second write
      ['record-fail', keys.rolledBack],
      ['twice-fail', keys.twiceFailed],
      ['twice', keys.twiceFailed], // the key was freed by the rollback: runs now
      ['stock-fail', keys.stock],
      ['outside', keys.outside],
      ['lease-fail', keys.outside],
    ]);
  }, 60_000);

  afterAll(async () => db?.drop());

  it('txHost.tx writes commit with the stored result, once per key', async () => {
    expect(outcome('record', keys.committed).map((entry) => entry.value)).toEqual(['charged', 'charged']);
    expect(await effectCount(db.pool, 'ledger', keys.committed)).toBe(1);
    expect(await records(keys.committed)).toEqual([{ status: 'completed' }]);
  });

  it('txHost.tx writes roll back with the record when the operation fails', async () => {
    expect(outcome('record-fail', keys.rolledBack)).toEqual([
      expect.objectContaining({ error: 'failed after the write' }),
    ]);
    expect(await effectCount(db.pool, 'ledger', keys.rolledBack)).toBe(0);
    expect(await records(keys.rolledBack)).toEqual([]);
  });

  it('@Transactional() methods run in a savepoint of the idempotency transaction and roll back with it', async () => {
    expect(outcome('twice-fail', keys.twiceFailed)).toEqual([
      expect.objectContaining({ error: 'failed after the write' }),
    ]);
    expect(outcome('twice', keys.twiceFailed)).toEqual([expect.objectContaining({ value: 'charged' })]);
    expect(await effectCount(db.pool, 'ledger', keys.twiceFailed)).toBe(2); // the second run's two rows only
  });

  it('control: the stock adapter writes outside, so its write survives the rollback', async () => {
    expect(outcome('stock-fail', keys.stock)).toEqual([expect.objectContaining({ error: 'failed after the write' })]);
    expect(await effectCount(db.pool, 'stock', keys.stock)).toBe(1);
    expect(await records(keys.stock)).toEqual([]);
  });

  it("only the stock adapter's write is reported, with the operation's name, as outside the transaction", () => {
    const warnings = outcomes.flatMap((entry, index) => (entry.warning ? [{ index, warning: entry.warning }] : []));
    expect(warnings).toHaveLength(1);
    expect(warnings[0].warning).toMatch(/^call charge: a second database connection was taken/);
    // Right before the outcome of the stock scenario: nothing of the adapter's own scenarios before it.
    expect(outcomes[warnings[0].index + 1]).toMatchObject({ scenario: 'stock-fail' });
  });

  it('outside transactional operations it behaves as the stock adapter', async () => {
    expect(outcome('lease-fail', keys.outside)).toEqual([
      expect.objectContaining({ error: expect.stringMatching(/^lease mode/) }),
    ]);
    expect(await effectCount(db.pool, 'ledger', keys.outside)).toBe(2);
  });
});
