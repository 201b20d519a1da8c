import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { type INestApplicationContext, type LoggerService, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { DataSource } from 'typeorm';
import {
  fingerprintOf,
  IdempotencyModule,
  IdempotencyService,
  PostgresIdempotencyStore,
  type RecordIdentity,
  RequestInProgressError,
} from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { type AppRole, createAppRole } from '../support/roles.js';

const HOUR = 3_600_000;

/** Keeps what the application logged, to read the audit lines. */
class KeptLogger implements LoggerService {
  readonly lines: string[] = [];
  log(message: unknown) {
    this.lines.push(String(message));
  }
  error(message: unknown) {
    this.lines.push(String(message));
  }
  warn(message: unknown) {
    this.lines.push(String(message));
  }
}

/**
 * IdempotencyService.releaseRecord() and deleteRecord(), as an application runs them: on
 * a database role with row privileges only (no superuser, so none of the README's former
 * `session_replication_role` workaround), through the transition trigger.
 */
describe('operator actions of IdempotencyService', () => {
  let db: TestDatabase;
  let role: AppRole;
  let app: INestApplicationContext;
  let service: IdempotencyService;
  let asRole: pg.Pool;
  const logger = new KeptLogger();
  let runs = 0;

  const charge = (key: string) => service.run({ key, name: 'charge', concurrency: 'reject' }, () => ({ run: ++runs }));
  const identityOf = (key: string): RecordIdentity => ({ scope: '', method: 'call', route: 'charge', key });
  const rows = async (key: string) =>
    (await db.pool.query('SELECT status FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows;

  beforeAll(async () => {
    db = await createTestDatabase();
    role = await createAppRole(db);
    asRole = new pg.Pool({ connectionString: role.url, max: 2 });
    @Module({
      imports: [TypeOrmModule.forRoot({ type: 'postgres', url: role.url }), IdempotencyModule.forRoot()],
    })
    class OperatorApp {}
    app = await NestFactory.createApplicationContext(OperatorApp, { logger });
    service = app.get(IdempotencyService);
  });

  afterAll(async () => {
    await app?.close();
    await asRole?.end();
    await db?.drop();
    await role?.drop();
  });

  it('runs as a role that cannot bypass the trigger', async () => {
    const client = await asRole.connect();
    try {
      await client.query('BEGIN');
      await expect(client.query('SET LOCAL session_replication_role = replica')).rejects.toThrow(/permission denied/);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('releaseRecord() frees a key whose owner is gone: the next call runs at once, and the log says so without the key', async () => {
    const key = 'stuck-' + randomUUID();
    // The owner that died: it claimed with an hour-long lease and will never complete.
    const secret = (await asRole.query("SELECT value FROM idempotency_settings WHERE name = 'fingerprint_secret'"))
      .rows[0].value as string;
    const dataSource = await new DataSource({ type: 'postgres', url: role.url }).initialize();
    try {
      const claimed = await new PostgresIdempotencyStore(dataSource).claim({
        identity: identityOf(key),
        fingerprint: fingerprintOf({ body: undefined }, Buffer.from(secret, 'base64')),
        ownerToken: randomUUID(),
        leaseMs: HOUR,
        ttlMs: 24 * HOUR,
      });
      expect(claimed.claimed).toBe(true);
    } finally {
      await dataSource.destroy();
    }
    await expect(charge(key)).rejects.toBeInstanceOf(RequestInProgressError);

    expect(await service.releaseRecord(identityOf(key))).toBe(true);
    expect(await rows(key)).toEqual([]);
    const audit = logger.lines.filter((line) => line.startsWith('operator release: call charge, record '));
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatch(/: released$/);
    expect(logger.lines.join('\n')).not.toContain(key);

    const before = runs;
    expect(await charge(key)).toEqual({ run: before + 1 });
    expect(await rows(key)).toEqual([{ status: 'completed' }]);
  });

  it('releaseRecord() leaves a completed record, and an absent one, alone', async () => {
    const key = 'done-' + randomUUID();
    await charge(key);
    expect(await service.releaseRecord(identityOf(key))).toBe(false);
    expect(await rows(key)).toEqual([{ status: 'completed' }]);
    expect(await service.releaseRecord(identityOf('absent-' + randomUUID()))).toBe(false);
    expect(logger.lines.at(-1)).toMatch(/^operator release: call charge, record [0-9a-f]{12}: no in-progress record$/);
  });

  it('deleteRecord() removes a completed record before it expires, which a plain DELETE by the same role may not', async () => {
    const key = 'delete-' + randomUUID();
    const first = await charge(key);
    expect(await charge(key)).toEqual(first); // replayed
    await expect(asRole.query('DELETE FROM idempotency_keys WHERE idempotency_key = $1', [key])).rejects.toThrow(
      /a completed record is kept until it expires/,
    );

    expect(await service.deleteRecord(identityOf(key))).toBe('completed');
    expect(await rows(key)).toEqual([]);
    expect(logger.lines.at(-1)).toMatch(
      /^operator delete: call charge, record [0-9a-f]{12}: deleted \(was completed\)$/,
    );
    // The setting that let it through was the statement's own: the next plain DELETE is refused again.
    const again = await charge(key);
    expect(again).not.toEqual(first);
    await expect(asRole.query('DELETE FROM idempotency_keys WHERE idempotency_key = $1', [key])).rejects.toThrow(
      /a completed record is kept until it expires/,
    );
    expect(await service.deleteRecord(identityOf('absent-' + randomUUID()))).toBeNull();
  });

  it('finds records by the scope as given, hashed where the library hashes it', async () => {
    const scope = 'tenant-'.padEnd(400, 'x');
    const key = 'scoped-' + randomUUID();
    await service.run({ key, name: 'charge', scope }, () => 'done');
    expect(
      (await db.pool.query('SELECT scope FROM idempotency_keys WHERE idempotency_key = $1', [key])).rows[0].scope,
    ).toMatch(/^sha256:/);
    expect(await service.deleteRecord({ ...identityOf(key), scope })).toBe('completed');
    expect(await rows(key)).toEqual([]);
  });
});
