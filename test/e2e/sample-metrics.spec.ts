import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post, send } from '../support/http.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

const PAYMENT = { amount: 1000, currency: 'EUR' };

/** The value of one Prometheus sample whose labels include all of `labels`. */
function sample(exposition: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of exposition.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    if (Object.entries(labels).every(([label, value]) => line.includes(`${label}="${value}"`))) {
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return undefined;
}

/** The sample app with METRICS=1: the library's OpenTelemetry metrics at GET /metrics, in Prometheus format. */
describe('sample app metrics', () => {
  let db: TestDatabase;
  let app: SampleProcess;
  let plain: SampleProcess;

  beforeAll(async () => {
    db = await createTestDatabase({ migrate: false });
    app = await startSampleApp({ DATABASE_URL: db.url, METRICS: '1' });
    plain = await startSampleApp({ DATABASE_URL: db.url });
  });

  afterAll(async () => {
    await app?.kill();
    await plain?.kill();
    await db?.drop();
  });

  it('counts outcomes by route and mode, and records claim and wait durations', async () => {
    const user = 'metrics-' + randomUUID().slice(0, 8);
    const key = randomUUID();
    expect((await post(app.url, '/payments', { key, user, body: PAYMENT })).status).toBe(201);
    expect((await post(app.url, '/payments', { key, user, body: PAYMENT })).status).toBe(201);
    expect((await post(app.url, '/payments', { key, user, body: { ...PAYMENT, amount: 1 } })).status).toBe(422);

    const response = await send(app.url, 'GET', '/metrics');
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    const payments = { method: 'POST', route: '/payments', mode: 'transactional' };
    for (const [outcome, count] of [
      ['claimed', 1],
      ['executed', 1],
      ['completed', 1],
      ['replayed', 1],
      ['key-reused', 1],
    ] as const) {
      expect(sample(response.text, 'idempotency_outcomes_total', { ...payments, outcome })).toBe(count);
    }
    expect(sample(response.text, 'idempotency_claim_duration_count', { ...payments, outcome: 'claimed' })).toBe(1);
    // No call waited for another: the wait histogram has no value (a replay that found the result did not wait).
    expect(sample(response.text, 'idempotency_wait_duration_count', payments)).toBeUndefined();
    expect(response.text).not.toContain(key);
    expect(response.text).not.toContain(user);
  });

  it('without METRICS=1 there is no /metrics', async () => {
    expect((await send(plain.url, 'GET', '/metrics')).status).toBe(404);
  });
});
