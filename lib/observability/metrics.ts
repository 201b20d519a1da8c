import type { EventSink, IdempotencyEvent } from './events.js';

/** The parts of @opentelemetry/api this uses, loaded only if it is installed. */
interface OpenTelemetryApi {
  metrics: {
    getMeter(name: string): {
      createCounter(
        name: string,
        options: { description: string },
      ): {
        add(value: number, attributes: Record<string, string>): void;
      };
      createHistogram(
        name: string,
        options: { description: string; unit: string },
      ): { record(value: number, attributes: Record<string, string>): void };
    };
  };
}

/**
 * @internal OpenTelemetry metrics from the events, through `@opentelemetry/api` only (the
 * application brings the SDK and the exporter): a counter of outcomes, and histograms of
 * the claim latency and of the wait of duplicates. Attributes: outcome, method, route,
 * mode; never the scope (unbounded cardinality) nor the key.
 */
export async function openTelemetrySink(
  load: () => Promise<unknown> = () => import('@opentelemetry/api'),
): Promise<EventSink | undefined> {
  let api: OpenTelemetryApi;
  try {
    api = (await load()) as OpenTelemetryApi;
  } catch {
    return undefined;
  }
  const meter = api.metrics.getMeter('nestjs-idempotency-postgres');
  const outcomes = meter.createCounter('idempotency.outcomes', {
    description: 'Calls of idempotent routes and operations, by outcome',
  });
  const claims = meter.createHistogram('idempotency.claim.duration', {
    description: 'From the call to its claim of the key, waiting for another call included',
    unit: 'ms',
  });
  const waits = meter.createHistogram('idempotency.wait.duration', {
    description: 'From the call to its answer, for calls answered from another call (a replay or a conflict)',
    unit: 'ms',
  });
  return {
    record(event: IdempotencyEvent) {
      const attributes = { outcome: event.type, method: event.method, route: event.route, mode: event.mode };
      outcomes.add(1, attributes);
      if (event.durationMs === undefined) return;
      if (event.type === 'claimed') claims.record(event.durationMs, attributes);
      else if (event.type === 'replayed' || event.type === 'conflict') waits.record(event.durationMs, attributes);
    },
  };
}
