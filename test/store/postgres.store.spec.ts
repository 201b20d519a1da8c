import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { DataSource } from 'typeorm';
import { PostgresIdempotencyStore, type RecordIdentity } from '../../lib/index.js';
import { UnstorableResponseError } from '../../lib/storage/idempotency.store.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { describeStoreContract, HOUR, identity, request, RESPONSE, won } from '../../lib/testing/index.js';

/**
 * Makes `ms` pass for a store that compares against the database clock: every timestamp
 * moves back by the same amount. That is no state transition, but the guard trigger
 * refuses every UPDATE of a live completed record, so it is bypassed for this one
 * transaction (session_replication_role = replica; the CHECK constraints still apply).
 */
async function advanceDatabaseClock(pool: pg.Pool, ms: number): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SET LOCAL session_replication_role = replica');
    await client.query(
      `UPDATE idempotency_keys
       SET created_at = created_at - $1::float8 * interval '1 millisecond',
           locked_until = locked_until - $1::float8 * interval '1 millisecond',
           completed_at = completed_at - $1::float8 * interval '1 millisecond',
           expires_at = expires_at - $1::float8 * interval '1 millisecond'`,
      [ms],
    );
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  } finally {
    client.release();
  }
}

async function connect(url: string): Promise<DataSource> {
  const dataSource = new DataSource({ type: 'postgres', url });
  await dataSource.initialize();
  return dataSource;
}

let db: TestDatabase;
let dataSource: DataSource;
let store: PostgresIdempotencyStore;

beforeAll(async () => {
  db = await createTestDatabase();
  dataSource = await connect(db.url);
  store = new PostgresIdempotencyStore(dataSource);
});

afterAll(async () => {
  await dataSource?.destroy();
  await db?.drop();
});

describeStoreContract(
  'PostgreSQL',
  async () => {
    await db.pool.query('TRUNCATE idempotency_keys');
    return { store, advance: (ms) => advanceDatabaseClock(db.pool, ms), teardown: async () => {} };
  },
  { describe, it, beforeEach, afterEach, expect },
);

describeStoreContract(
  'PostgreSQL, without prepared statements',
  async () => {
    await db.pool.query('TRUNCATE idempotency_keys');
    return {
      store: new PostgresIdempotencyStore(dataSource, { preparedStatements: false }),
      advance: (ms) => advanceDatabaseClock(db.pool, ms),
      teardown: async () => {},
    };
  },
  { describe, it, beforeEach, afterEach, expect },
);

describe('prepared statements', () => {
  /** Runs `sql` on every connection of the store's pool (all idle between requests). */
  async function onEveryConnection(sql: string): Promise<void> {
    const pool = (dataSource.driver as unknown as { master: pg.Pool }).master;
    const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()));
    try {
      for (const client of clients) await client.query(sql);
    } finally {
      for (const client of clients) client.release();
    }
  }

  /** A lease-mode and a transactional-mode record, claimed and completed, and read back. */
  async function bothModes(): Promise<void> {
    const lease = request(identity());
    won(await store.claim(lease));
    expect(await store.complete(lease.identity, lease.ownerToken, RESPONSE, HOUR)).toBe(true);
    const transactional = request(identity());
    const transaction = await store.openTransaction();
    won(await transaction.claim(transactional, Date.now() + 1000, 30_000));
    await transaction.commit(transactional.identity, transactional.ownerToken, RESPONSE, HOUR);
    for (const id of [lease.identity, transactional.identity]) {
      expect(await store.find(id)).toMatchObject({ status: 'completed', response: RESPONSE });
    }
  }

  it('are prepared again on a connection whose session lost them (DEALLOCATE ALL)', async () => {
    await bothModes();
    // Every idle connection at once, as a pooler's reset would: the retry on another one must not fail too.
    await onEveryConnection('DEALLOCATE ALL');
    await bothModes();
    await bothModes();
    // Connections not used since still believe their statements prepared, and would cost the
    // next tests a retry each (which count statements): they go.
    const pool = (dataSource.driver as unknown as { master: pg.Pool }).master;
    const idle = await Promise.all(Array.from({ length: pool.idleCount }, () => pool.connect()));
    for (const client of idle) client.release(true);
  });

  it('keep working when a migration adds a column to the table while the application runs', async () => {
    await bothModes();
    await db.pool.query('ALTER TABLE idempotency_keys ADD COLUMN added_later integer');
    try {
      await bothModes();
    } finally {
      await db.pool.query('ALTER TABLE idempotency_keys DROP COLUMN added_later');
    }
    await bothModes();
  });
});

describe('a transactional claim', () => {
  // The transactional claim has a slow path of its own (in the request's transaction): it must say so too.
  describe.each([true, false])('with prepared statements: %s', (preparedStatements) => {
    it('says it took over a lapsed lease-mode claim (takenOver), and not for a free key', async () => {
      const transactional = new PostgresIdempotencyStore(dataSource, { preparedStatements });
      const id = identity();
      won(await store.claim(request(id, { leaseMs: 1 })));
      await sleep(20); // the owner never comes back: its lease lapses
      for (const [target, expected] of [
        [id, true],
        [identity(), false],
      ] as const) {
        const successor = request(target);
        const transaction = await transactional.openTransaction();
        try {
          const claim = await transaction.claim(successor, Date.now() + 1000, 30_000);
          expect(won(claim).ownerToken).toBe(successor.ownerToken);
          expect(claim.claimed && claim.takenOver === true).toBe(expected);
        } finally {
          await transaction.rollback();
        }
      }
    });
  });
});

describe('the database enforces the state machine, whatever SQL runs', () => {
  const CHECK_VIOLATION = '23514';
  const WHERE = 'WHERE scope = $1 AND method = $2 AND route = $3 AND idempotency_key = $4';

  const bind = (id: RecordIdentity) => [id.scope, id.method, id.route, id.key];

  async function row(id: RecordIdentity): Promise<unknown> {
    const { rows } = await db.pool.query(`SELECT * FROM idempotency_keys ${WHERE}`, bind(id));
    return rows[0] ?? null;
  }

  /** The statement (its $1..$4 bound to the identity) fails for `reason` and the row stays as it was. */
  async function expectRefused(id: RecordIdentity, sql: string, reason: RegExp): Promise<void> {
    const before = await row(id);
    const attempt = db.pool.query(sql, bind(id));
    await expect(attempt).rejects.toMatchObject({ code: CHECK_VIOLATION, message: expect.stringMatching(reason) });
    expect(await row(id)).toEqual(before);
  }

  async function inProgress(): Promise<RecordIdentity> {
    const claim = request(identity());
    won(await store.claim(claim));
    return claim.identity;
  }

  async function completed(): Promise<RecordIdentity> {
    const claim = request(identity());
    won(await store.claim(claim));
    expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
    return claim.identity;
  }

  async function lapsed(): Promise<RecordIdentity> {
    const id = await inProgress();
    // Allowed: the owner's own row, only its lease moves.
    await db.pool.query(`UPDATE idempotency_keys SET locked_until = now() - interval '1 second' ${WHERE}`, bind(id));
    return id;
  }

  async function expired(): Promise<RecordIdentity> {
    const id = await inProgress();
    await db.pool.query(
      `UPDATE idempotency_keys SET locked_until = now() - interval '2 seconds', expires_at = now() - interval '1 second' ${WHERE}`,
      bind(id),
    );
    return id;
  }

  beforeEach(async () => {
    await db.pool.query('TRUNCATE idempotency_keys');
  });

  it('a completed record does not go back to in_progress before it expires', async () => {
    await expectRefused(
      await completed(),
      `UPDATE idempotency_keys SET status = 'in_progress', owner_token = '${randomUUID()}',
         locked_until = now() + interval '1 minute', response = NULL, completed_at = NULL ${WHERE}`,
      /completed record is immutable/,
    );
  });

  it("a completed record's response does not change", async () => {
    await expectRefused(
      await completed(),
      `UPDATE idempotency_keys SET response = '{"status":500,"headers":{},"kind":"empty"}' ${WHERE}`,
      /completed record is immutable/,
    );
  });

  it("a completed record's expiry does not move", async () => {
    await expectRefused(
      await completed(),
      `UPDATE idempotency_keys SET expires_at = expires_at + interval '1 day' ${WHERE}`,
      /completed record is immutable/,
    );
  });

  it('a live lease is not taken over with another owner token', async () => {
    await expectRefused(
      await inProgress(),
      `UPDATE idempotency_keys SET owner_token = '${randomUUID()}', locked_until = now() + interval '1 minute' ${WHERE}`,
      /lease has lapsed/,
    );
  });

  it('a lapsed lease is not taken over with another fingerprint', async () => {
    await expectRefused(
      await lapsed(),
      `UPDATE idempotency_keys SET owner_token = '${randomUUID()}', fingerprint = 'fp-other',
         locked_until = now() + interval '1 minute' ${WHERE}`,
      /fingerprint of a live record/,
    );
  });

  it('the fingerprint of a claimed record does not change', async () => {
    await expectRefused(
      await inProgress(),
      `UPDATE idempotency_keys SET fingerprint = 'fp-other' ${WHERE}`,
      /fingerprint/,
    );
  });

  describe.each(['scope', 'method', 'route', 'idempotency_key'])('the identity column %s does not change', (column) => {
    it.each([
      ['in progress', inProgress],
      ['completed', completed],
      ['expired', expired],
    ])('on a record %s', async (_, make) => {
      await expectRefused(
        await make(),
        `UPDATE idempotency_keys SET ${column} = ${column} || '-x' ${WHERE}`,
        /identity/,
      );
    });
  });

  it('a live completed record cannot be deleted; an expired one and an in-flight one can', async () => {
    await expectRefused(await completed(), `DELETE FROM idempotency_keys ${WHERE}`, /kept until it expires/);
    for (const make of [expired, inProgress]) {
      const id = await make();
      await db.pool.query(`DELETE FROM idempotency_keys ${WHERE}`, bind(id));
      expect(await row(id)).toBeNull();
    }
  });

  it('a status outside the set is refused, on update and on insert', async () => {
    await expectRefused(await inProgress(), `UPDATE idempotency_keys SET status = 'failed' ${WHERE}`, /status_check/);
    const id = identity();
    await expectRefused(
      id,
      `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, expires_at)
       VALUES ($1, $2, $3, $4, 'fp', 'pending', now() + interval '1 hour')`,
      /created in_progress/,
    );
    expect(await row(id)).toBeNull();
  });

  it('a completed row without a response is refused, on update and on insert', async () => {
    await expectRefused(
      await inProgress(),
      `UPDATE idempotency_keys SET status = 'completed', owner_token = NULL, locked_until = NULL,
         completed_at = now() ${WHERE}`,
      /completed_check/,
    );
    const id = identity();
    await expectRefused(
      id,
      `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, completed_at, expires_at)
       VALUES ($1, $2, $3, $4, 'fp', 'completed', now(), now() + interval '1 hour')`,
      /created in_progress/,
    );
    expect(await row(id)).toBeNull();
  });

  it('the rows above are in the states they claim: the store may take over the lapsed one and re-claim the expired one', async () => {
    const taken = await lapsed();
    const successor = request(taken);
    expect(won(await store.claim(successor)).ownerToken).toBe(successor.ownerToken);
    const reclaimed = await expired();
    expect(won(await store.claim(request(reclaimed, { fingerprint: 'fp-other' }))).fingerprint).toBe('fp-other');
  });
});

describe('group commit: concurrent lease-mode claims and completions share statements', () => {
  /** Counts the connections the store takes from its pool: one per statement of a claim or completion. */
  function countStatements(): { readonly count: number; stop(): void } {
    const pool = (dataSource.driver as unknown as { master: pg.Pool }).master;
    const counter = { count: 0, stop: () => void pool.removeListener('acquire', onAcquire) };
    const onAcquire = () => counter.count++;
    pool.on('acquire', onAcquire);
    return counter;
  }

  it('gives each of many concurrent claims its own outcome, one winner per key, in a few statements', async () => {
    const ids = Array.from({ length: 40 }, () => identity());
    const first = ids.map((id) => request(id));
    const duplicates = ids.slice(0, 10).map((id) => request(id, { fingerprint: 'fp-duplicate' }));
    const statements = countStatements();
    const results = await Promise.all([...first, ...duplicates].map((claim) => store.claim(claim)));
    statements.stop();
    // Sent together, they go as one statement for the first, and one for all the rest: the
    // duplicates too, which see the claim of the earlier request for their key.
    expect(statements.count).toBe(2);
    for (const [i, id] of ids.entries()) {
      const outcomes = results.filter((_, j) => [...first, ...duplicates][j].identity === id);
      expect(outcomes.filter((outcome) => outcome.claimed)).toHaveLength(1);
      const record = await store.find(id);
      expect(record).toMatchObject({
        status: 'in_progress',
        ownerToken: first[i].ownerToken,
        fingerprint: 'fp-original',
      });
    }
    for (const i of duplicates.keys()) {
      const outcome = results[first.length + i];
      expect(outcome.claimed ? null : outcome.observed.record.ownerToken).toBe(first[i].ownerToken);
    }
  });

  it('answers many concurrent look-ups, a key asked for several times included, in two statements', async () => {
    const completed = Array.from({ length: 10 }, () => request(identity()));
    for (const claim of completed) {
      won(await store.claim(claim));
      expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
    }
    const held = request(identity());
    won(await store.claim(held));
    const absent = Array.from({ length: 10 }, () => identity());
    const asked = [...completed.map((claim) => claim.identity), held.identity, ...absent, completed[0].identity];
    const statements = countStatements();
    const found = await Promise.all(asked.map((id) => store.find(id)));
    statements.stop();
    expect(statements.count).toBe(2);
    for (const [i, record] of found.entries()) {
      if (i < completed.length || i === asked.length - 1) {
        expect(record).toMatchObject({ ...asked[i], status: 'completed', response: RESPONSE });
      } else if (i === completed.length) {
        expect(record).toMatchObject({ ...held.identity, status: 'in_progress', ownerToken: held.ownerToken });
      } else {
        expect(record).toBeNull();
      }
    }
  });

  it('fails only the claim the database refuses, not the others of its group', async () => {
    const good = Array.from({ length: 10 }, () => request(identity()));
    // Over the table's key length limit: a CHECK violation that fails its whole statement.
    const bad = request({ ...identity(), key: 'k'.repeat(1025) });
    const settled = await Promise.allSettled(
      [...good, bad, ...good.map(() => request(identity()))].map((c) => store.claim(c)),
    );
    expect(settled.filter((outcome) => outcome.status === 'rejected')).toEqual([
      { status: 'rejected', reason: expect.objectContaining({ code: '23514' }) },
    ]);
    for (const claim of good) expect((await store.find(claim.identity))?.ownerToken).toBe(claim.ownerToken);
    expect(await store.find(bad.identity)).toBeNull();
  });

  it('completes concurrent records each with its own response, fencing out a wrong owner and refusing an unstorable one alone', async () => {
    const claims = Array.from({ length: 20 }, () => request(identity()));
    for (const claim of claims) won(await store.claim(claim));
    const response = (i: number) => ({ ...RESPONSE, body: JSON.stringify({ i }) });
    // jsonb cannot hold \u0000: PostgreSQL refuses the statement that carries it.
    const unstorable = { ...RESPONSE, body: 'nul \u0000 here' };
    const outcomes = await Promise.allSettled(
      claims.map((claim, i) =>
        store.complete(
          claim.identity,
          i === 3 ? randomUUID() : claim.ownerToken,
          i === 5 ? unstorable : response(i),
          HOUR,
        ),
      ),
    );
    for (const [i, claim] of claims.entries()) {
      const record = await store.find(claim.identity);
      if (i === 3) {
        expect(outcomes[i]).toEqual({ status: 'fulfilled', value: false });
        expect(record?.status).toBe('in_progress');
      } else if (i === 5) {
        expect(outcomes[i]).toMatchObject({ status: 'rejected', reason: expect.any(UnstorableResponseError) });
        expect(record?.status).toBe('in_progress');
      } else {
        expect(outcomes[i]).toEqual({ status: 'fulfilled', value: true });
        expect(record).toMatchObject({ status: 'completed', response: response(i) });
      }
    }
  });
});

describe('sharedSecret()', () => {
  // Every instance of an app must MAC fingerprints with the same secret, or a retry on
  // another instance (or after a restart) would look like a different payload (422).
  it('is created once and read by every store on the database, also when they start together', async () => {
    const fresh = await createTestDatabase();
    const sources = await Promise.all(Array.from({ length: 4 }, () => connect(fresh.url)));
    try {
      const secrets = await Promise.all(sources.map((source) => new PostgresIdempotencyStore(source).sharedSecret()));
      expect(new Set(secrets.map((secret) => secret.toString('hex'))).size).toBe(1);
      const { rows } = await fresh.pool.query(
        "SELECT value FROM idempotency_settings WHERE name = 'fingerprint_secret'",
      );
      expect(rows).toHaveLength(1);
      expect(Buffer.from(rows[0].value, 'base64').equals(secrets[0])).toBe(true);
      const restarted = await connect(fresh.url);
      expect((await new PostgresIdempotencyStore(restarted).sharedSecret()).equals(secrets[0])).toBe(true);
      await restarted.destroy();
    } finally {
      await Promise.all(sources.map((source) => source.destroy()));
      await fresh.drop();
    }
  });
});

describe('verify()', () => {
  it('resolves when the table exists', async () => {
    await expect(store.verify()).resolves.toBeUndefined();
  });

  it('throws a message that names the table and the migrations to run when the table is missing', async () => {
    const bare = await createTestDatabase();
    const bareSource = await connect(bare.url);
    try {
      await bare.pool.query('DROP TABLE idempotency_keys');
      const verifying = new PostgresIdempotencyStore(bareSource).verify();
      await expect(verifying).rejects.toThrow(/"idempotency_keys" does not exist/);
      await expect(verifying).rejects.toThrow(/idempotencyMigrations/);
    } finally {
      await bareSource.destroy();
      await bare.drop();
    }
  });

  it('names idempotency_settings when only that table is missing (the second migration was not run)', async () => {
    const bare = await createTestDatabase();
    const bareSource = await connect(bare.url);
    try {
      await bare.pool.query('DROP TABLE idempotency_settings');
      await expect(new PostgresIdempotencyStore(bareSource).verify()).rejects.toThrow(
        /"idempotency_settings" does not exist/,
      );
    } finally {
      await bareSource.destroy();
      await bare.drop();
    }
  });
});
