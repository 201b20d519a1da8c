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
    expect(ofKey(name).sort()).toEqual(['claimed', 'completed', 'conflict', 'executed']);
  });

  it('records the outcomes counter and the claim and wait histograms', async () => {
    const { resourceMetrics } = await reader.collect();
    const all = resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics);
    const outcomes = all.find((metric) => metric.descriptor.name === 'idempotency.outcomes')!;
    const counted = (outcome: string) =>
      outcomes.dataPoints
        .filter((point) => point.attributes.outcome === outcome)
        .reduce((sum, point) => sum + (point.value as number), 0);
    for (const outcome of ['claimed', 'executed', 'completed', 'replayed', 'released', 'key-reused', 'conflict']) {
      expect(counted(outcome)).toBe(events.filter((event) => event.type === outcome).length);
    }
    for (const point of outcomes.dataPoints) {
      expect(Object.keys(point.attributes).sort()).toEqual(['method', 'mode', 'outcome', 'route']);
    }
    const names = all.map((metric) => metric.descriptor.name);
    expect(names).toEqual(expect.arrayContaining(['idempotency.claim.duration', 'idempotency.wait.duration']));
  });
});
