import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { DataSource } from 'typeorm';
import { PostgresIdempotencyStore } from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { HOUR, identity, request, RESPONSE, won } from '../../lib/testing/index.js';

/*
 * The PostgreSQL store's group statements under network faults, with every connection of
 * the store's DataSource going through a TCP proxy. A reply lost after PostgreSQL ran (and
 * committed) a group's statement makes each of its operations run again alone, and that
 * re-run must read what the lost statement did as its own outcome. A statement that never
 * returns must not hold up the operations that come after it.
 */
describe('PostgreSQL store: group statements under network faults', () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let dataSource: DataSource;
  let store: PostgresIdempotencyStore;

  beforeAll(async () => {
    db = await createTestDatabase();
    proxy = await TcpProxy.start(db.url);
    dataSource = new DataSource({ type: 'postgres', url: proxy.url(db.url), extra: { max: 10 } });
    await dataSource.initialize();
    store = new PostgresIdempotencyStore(dataSource);
  });

  afterEach(async () => {
    await db.pool.query('TRUNCATE idempotency_keys');
  });

  afterAll(async () => {
    await dataSource?.destroy();
    await proxy?.close();
    await db?.drop();
  });

  it('gives each claim of the group the key it inserted, instead of 409 on its own claim until the lease lapses', async () => {
    const claims = Array.from({ length: 6 }, () => request(identity()));
    // The first claim goes alone; the five that arrive meanwhile go as one group statement
    // (the only one with ORDINALITY), which commits while its reply is lost.
    proxy.loseNextReplyTo('WITH ORDINALITY');
    const results = await Promise.all(claims.map((claim) => store.claim(claim)));
    expect(proxy.cutCount).toBe(1);
    for (const [i, claim] of claims.entries()) {
      const { rows } = await db.pool.query(
        'SELECT status, owner_token FROM idempotency_keys WHERE idempotency_key = $1',
        [claim.identity.key],
      );
      // The row is this claim's: PostgreSQL inserted it with this claim's owner token.
      expect(rows).toEqual([{ status: 'in_progress', owner_token: claim.ownerToken }]);
      expect({ i, claimed: results[i].claimed }).toEqual({ i, claimed: true });
    }
  });

  it('still answers a claim of the group that lost the key to another as held by that other', async () => {
    const id = identity();
    const owner = request(id);
    const duplicate = request(id, { fingerprint: 'fp-duplicate' });
    const other = request(identity());
    proxy.loseNextReplyTo('WITH ORDINALITY');
    const [alone, won, lost] = await Promise.all([other, owner, duplicate].map((claim) => store.claim(claim)));
    expect(proxy.cutCount).toBe(2);
    expect(alone.claimed).toBe(true);
    expect(won.claimed).toBe(true);
    expect(lost.claimed ? null : lost.observed.record.ownerToken).toBe(owner.ownerToken);
  });

  it('lets later claims and completions past a statement whose connection went silent, within their deadlines', async () => {
    const local = new DataSource({ type: 'postgres', url: proxy.url(db.url), extra: { max: 4 } });
    await local.initialize();
    const pool = (local.driver as unknown as { master: pg.Pool }).master;
    const silentStore = new PostgresIdempotencyStore(local);
    const held = request(identity());
    const done = request(identity());
    won(await silentStore.claim(held));
    won(await silentStore.claim(done));
    // Two idle connections, then a partition that silences them: a claim and a completion
    // each take one and never hear back (no statement_timeout, no keep-alive by default).
    const idle = [await pool.connect(), await pool.connect()];
    for (const client of idle) client.release();
    proxy.silence();
    const stuck = [
      silentStore.claim(request(identity())),
      silentStore.complete(held.identity, held.ownerToken, RESPONSE, HOUR),
    ];
    await sleep(200);
    try {
      // Before, each would have opened a connection of its own; behind the silent statement
      // of its kind, neither may wait past its deadline.
      const later = request(identity(), { deadline: Date.now() + 3000 });
      const outcomes = await Promise.race([
        Promise.allSettled([
          silentStore.claim(later),
          silentStore.complete(done.identity, done.ownerToken, RESPONSE, HOUR),
        ]),
        sleep(6000).then(() => 'still waiting after 6 s'),
      ]);
      expect(outcomes).toEqual([
        { status: 'fulfilled', value: expect.objectContaining({ claimed: true }) },
        { status: 'fulfilled', value: true },
      ]);
    } finally {
      proxy.cut();
      await Promise.allSettled(stuck);
      await local.destroy();
    }
  });
});
