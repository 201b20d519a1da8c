import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { type INestApplicationContext, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { metrics } from '@opentelemetry/api';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type IdempotencyEvent,
  IdempotencyKeyReuseError,
  IdempotencyModule,
  IdempotencyService,
  IdempotencyStore,
  RequestInProgressError,
} from '../../lib/index.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

/** Collects on demand, as a Prometheus scrape would. */
class CollectingReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

/**
 * The `onEvent` listener and the OpenTelemetry metrics (through @opentelemetry/api, with
 * the SDK's MeterProvider registered as an application would), for real calls on PostgreSQL.
 */
describe('events and metrics', () => {
  let db: TestDatabase;
  let app: INestApplicationContext;
  let service: IdempotencyService;
  const events: IdempotencyEvent[] = [];
  const reader = new CollectingReader();

  const ofKey = (route: string) => events.filter((event) => event.route === route).map((event) => event.type);

  beforeAll(async () => {
    metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
    db = await createTestDatabase();
    @Module({
      imports: [
        TypeOrmModule.forRoot({ type: 'postgres', url: db.url }),
        IdempotencyModule.forRoot({ onEvent: (event) => events.push(event), metrics: true }),
      ],
    })
    class EventsApp {}
    app = await NestFactory.createApplicationContext(EventsApp, { logger: false });
    service = app.get(IdempotencyService);
  });

  afterAll(async () => {
    await app?.close();
    await db?.drop();
    metrics.disable();
  });

  it('a first call, its replay, a reused key and a released failure, in lease mode', async () => {
    const name = 'lease-' + randomUUID();
    const key = randomUUID();
    await service.run({ key, name, payload: 1 }, () => sleep(20).then(() => 'done'));
    await service.run({ key, name, payload: 1 }, () => 'never');
    await expect(service.run({ key, name, payload: 2 }, () => 'never')).rejects.toBeInstanceOf(
      IdempotencyKeyReuseError,
    );
    await expect(
      service.run({ key: randomUUID(), name, payload: 1 }, () => Promise.reject(new Error('boom'))),
    ).rejects.toThrow('boom');
    expect(ofKey(name)).toEqual([
      'claimed',
      'executed',
      'completed',
      'replayed',
      'key-reused',
      'claimed',
      'executed',
      'released',
    ]);
    const executed = events.find((event) => event.route === name && event.type === 'executed')!;
    expect(executed).toMatchObject({ scope: '', method: 'call', mode: 'lease' });
    expect(executed.durationMs).toBeGreaterThanOrEqual(15);
    // Never a key or a payload.
    for (const event of events)
      expect(Object.keys(event).sort()).toEqual(expect.arrayContaining(['method', 'mode', 'route', 'scope', 'type']));
    expect(JSON.stringify(events)).not.toContain(key);
  });

  it('a retry after its owner stalled takes the lease over: one lease-taken-over, right after claimed', async () => {
    const name = 'takeover-' + randomUUID();
    // The record's fingerprint for this payload, from a call that completes.
    const completed = { scope: '', method: 'call', route: name, key: randomUUID() };
    await service.run({ key: completed.key, name, payload: { amount: 7 } }, () => 'done');
    const { fingerprint } = (await service.find(completed))!;
    const identity = { ...completed, key: randomUUID() };
    // An owner that claims the key and is never heard of again (crashed: no renewal, no completion).
    const store = app.get(IdempotencyStore);
    const stalled = await store.claim({ identity, fingerprint, ownerToken: randomUUID(), leaseMs: 50, ttlMs: 60_000 });
    expect(stalled.claimed).toBe(true);
    await sleep(100);
    const before = events.length;
    expect(await service.run({ key: identity.key, name, payload: { amount: 7 } }, () => 'again')).toBe('again');
    const retry = events.slice(before).filter((event) => event.route === name);
    expect(retry.map((event) => event.type)).toEqual(['claimed', 'lease-taken-over', 'executed', 'completed']);
    expect(retry[1]).toEqual({ type: 'lease-taken-over', scope: '', method: 'call', route: name, mode: 'lease' });
    expect(JSON.stringify(events)).not.toContain(identity.key);
    // A later call for a fresh key is no take-over.
    await service.run({ key: randomUUID(), name, payload: { amount: 7 } }, () => 'fresh');
    expect(ofKey(name).filter((type) => type === 'lease-taken-over')).toHaveLength(1);
  });

  it("a parallel duplicate ('wait') waits for the first call, then replays: waited, then replayed", async () => {
    const name = 'wait-' + randomUUID();
    const key = randomUUID();
    const first = service.run({ key, name, payload: 1 }, () => sleep(300).then(() => 'done'));
    await sleep(50);
    const duplicate = await service.run(
      { key, name, payload: 1, concurrency: 'wait', waitTimeoutMs: 5000 },
      () => 'never',
    );
    expect(duplicate).toBe('done');
    await first;
    // The first call's events and the duplicate's, each call's in its order.
    expect(ofKey(name).filter((type) => type === 'waited' || type === 'replayed')).toEqual(['waited', 'replayed']);
    expect(ofKey(name).sort()).toEqual(['claimed', 'completed', 'executed', 'replayed', 'waited']);
    const waited = events.find((event) => event.route === name && event.type === 'waited')!;
    expect(waited).toMatchObject({ scope: '', method: 'call', mode: 'lease' });
    expect(waited.durationMs).toBeGreaterThanOrEqual(150);
    // A replay that found the result stored waited for nothing.
    await service.run({ key, name, payload: 1, concurrency: 'wait' }, () => 'never');
    expect(ofKey(name).slice(5)).toEqual(['replayed']);
  });

  it("in transactional mode too: a duplicate ('wait') that waited in PostgreSQL for the first call's commit", async () => {
    const name = 'tx-wait-' + randomUUID();
    const key = randomUUID();
    const first = service.run({ key, name, transactional: true }, () => sleep(300).then(() => 'done'));
    await sleep(50);
    const duplicate = service.run(
      { key, name, transactional: true, concurrency: 'wait', waitTimeoutMs: 5000 },
      () => 'never',
    );
    expect(await duplicate).toBe('done');
    await first;
    // The first call's events and the duplicate's, each call's in its order.
    expect(ofKey(name).filter((type) => type === 'waited' || type === 'replayed')).toEqual(['waited', 'replayed']);
    expect(ofKey(name).sort()).toEqual(['claimed', 'completed', 'executed', 'replayed', 'waited']);
    expect(events.find((event) => event.route === name && event.type === 'waited')!.mode).toBe('transactional');
  });

  it('a duplicate in flight gets a conflict, with how long it waited; transactional mode is named', async () => {
    const name = 'tx-' + randomUUID();
    const key = randomUUID();
    const first = service.run({ key, name, transactional: true }, () => sleep(300).then(() => 'done'));
    await sleep(50);
    await expect(
      service.run({ key, name, transactional: true, concurrency: 'wait', waitTimeoutMs: 100 }, () => 'never'),
    ).rejects.toBeInstanceOf(RequestInProgressError);
    await first;
    const conflict = events.find((event) => event.route === name && event.type === 'conflict')!;
    expect(conflict.mode).toBe('transactional');
    expect(conflict.durationMs).toBeGreaterThanOrEqual(90);
    const waited = events.find((event) => event.route === name && event.type === 'waited')!;
    expect(waited.durationMs).toBeGreaterThanOrEqual(90);
    expect(ofKey(name).sort()).toEqual(['claimed', 'completed', 'conflict', 'executed', 'waited']);
    // It waited, then gave up: waited comes right before its conflict.
    const types = ofKey(name);
    expect(types[types.indexOf('conflict') - 1]).toBe('waited');
  });

  it('records the outcomes counter and the claim and wait histograms', async () => {
    const { resourceMetrics } = await reader.collect();
    const all = resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics);
    const outcomes = all.find((metric) => metric.descriptor.name === 'idempotency.outcomes')!;
    const counted = (outcome: string) =>
      outcomes.dataPoints
        .filter((point) => point.attributes.outcome === outcome)
        .reduce((sum, point) => sum + (point.value as number), 0);
    const outcomesSeen = [
      'claimed',
      'lease-taken-over',
      'executed',
      'completed',
      'waited',
      'replayed',
      'released',
      'key-reused',
      'conflict',
    ];
    for (const outcome of outcomesSeen) {
      expect(counted(outcome)).toBeGreaterThan(0);
      expect(counted(outcome)).toBe(events.filter((event) => event.type === outcome).length);
    }
    for (const point of outcomes.dataPoints) {
      expect(Object.keys(point.attributes).sort()).toEqual(['method', 'mode', 'outcome', 'route']);
    }
    const histogram = (name: string) => all.find((metric) => metric.descriptor.name === name)!;
    const outcomesOf = (name: string) => new Set(histogram(name).dataPoints.map((point) => point.attributes.outcome));
    expect(outcomesOf('idempotency.claim.duration')).toEqual(new Set(['claimed']));
    // The wait histogram holds the waits, one value per waited event.
    expect(outcomesOf('idempotency.wait.duration')).toEqual(new Set(['waited']));
    const waits = histogram('idempotency.wait.duration').dataPoints.reduce(
      (sum, point) => sum + (point.value as { count: number }).count,
      0,
    );
    expect(waits).toBe(events.filter((event) => event.type === 'waited').length);
  });
});
