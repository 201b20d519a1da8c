import { metrics } from '@opentelemetry/api';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import type { IdempotencyModuleOptions } from '../lib/index.js';

/** Aggregates like any SDK reader; nothing collects it during a run, as between two scrapes. */
class IdleReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

/**
 * BENCH_OBSERVABILITY=1: the bench app runs with an `onEvent` listener and `metrics: true`
 * (the OpenTelemetry SDK registered), to measure what events and metrics cost per request.
 */
export function observabilityOptions(): Pick<IdempotencyModuleOptions, 'onEvent' | 'metrics'> {
  if (process.env.BENCH_OBSERVABILITY !== '1') return {};
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [new IdleReader()] }));
  let seen = 0;
  return { onEvent: () => void seen++, metrics: true };
}
