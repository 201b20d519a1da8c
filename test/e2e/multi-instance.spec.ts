import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { Cluster } from '../support/cluster.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';

/** Real processes of the sample app sharing one database, with duplicates split across them. */
describe('several app instances on one database', () => {
  let db: TestDatabase;
  const cluster = new Cluster(() => db);

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(() => cluster.stopAll());
  afterAll(async () => {
    await db?.drop();
  });

  it('runs a payment once for 60 duplicates split across two instances, all answered alike', async () => {
    const [a, b] = await cluster.startMany(2, { PROVIDER_LATENCY_MS: '300' });
    const user = 'split-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { amount: 1234, currency: 'EUR' };
    const responses = await Promise.all(
      Array.from({ length: 60 }, (_, i) => post(i % 2 ? a.url : b.url, '/payments', { key, user, body })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(60).fill(201));
    expect(new Set(responses.map((r) => r.text)).size).toBe(1);
    expect(responses.filter((r) => r.headers.get('idempotent-replayed') === null)).toHaveLength(1);
    expect(await cluster.count('payments', user)).toBe(1);
  });

  it("queues an e-mail once across instances; parallel duplicates get 409 ('reject')", async () => {
    const [a, b] = await cluster.startMany(2, { PROVIDER_LATENCY_MS: '300' });
    const user = 'reject-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    const body = { to: 'x@example.com', subject: 'hello' };
    const responses = await Promise.all(
      Array.from({ length: 40 }, (_, i) => post(i % 2 ? a.url : b.url, '/emails', { key, user, body })),
    );
    const executed = responses.filter((r) => r.status === 202 && r.headers.get('idempotent-replayed') === null);
    expect(executed).toHaveLength(1);
    for (const response of responses) {
      if (response.status === 202) expect(response.text).toBe(executed[0].text);
      else expect(response.status).toBe(409);
    }
    expect(await cluster.count('emails', user)).toBe(1);
  });
});
