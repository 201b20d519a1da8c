import type { EventSink, IdempotencyEvent, IdempotencyEventType } from './events.js';

type Attributes = Record<string, string | boolean>;

/** The parts of @opentelemetry/api this uses, loaded only if it is installed. */
interface OpenTelemetryApi {
  metrics: {
    getMeter(name: string): {
      createObservableCounter(
        name: string,
        options: { description: string },
      ): {
        addCallback(callback: (result: { observe(value: number, attributes: Attributes): void }) => void): void;
      };
      createHistogram(
        name: string,
        options: { description: string; unit: string },
      ): { record(value: number, attributes: Attributes): void };
    };
  };
}

/**
 * The SDK's default cardinality limit: past this many attribute sets, outcomes are counted
 * under one overflow set, as the SDK itself would, rather than grow without bound (an
 * operation name built from data, for example).
 */
const MAX_SERIES = 2000;
const OVERFLOW: Attributes = { 'otel.metric.overflow': true };

/** The outcome count of one set of attributes, and that set, built once. */
interface Series {
  readonly attributes: Attributes;
  count: number;
}

/** The series of one route and method, by mode and outcome. */
type MethodSeries = Record<IdempotencyEvent['mode'], Map<IdempotencyEventType, Series>>;

/**
 * @internal OpenTelemetry metrics from the events, through `@opentelemetry/api` only (the
 * application brings the SDK and the exporter): a counter of outcomes, and histograms of
 * the claim latency and of the wait of duplicates. Attributes: outcome, method, route,
 * mode; never the scope (unbounded cardinality) nor the key.
 *
 * The outcomes are counted here, with a plain increment, and handed to the SDK only when a
 * reader collects (an observable counter): a synchronous counter would make the SDK sort
 * and serialise the attributes of every event to find their series, several times per call,
 * on the request's path. The histograms cannot wait for a collection; each call records at
 * most one value.
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
  // Found through the event's own strings (a route's is the same string on every call, its
  // hash computed once), rather than through a key built per event.
  const byRoute = new Map<string, Map<string, MethodSeries>>();
  const series: Series[] = [];
  const overflow: Series = { attributes: OVERFLOW, count: 0 };
  meter
    .createObservableCounter('idempotency.outcomes', {
      description: 'Calls of idempotent routes and operations, by outcome',
    })
    .addCallback((result) => {
      for (const { count, attributes } of series) result.observe(count, attributes);
      if (overflow.count > 0) result.observe(overflow.count, overflow.attributes);
    });
  const claims = meter.createHistogram('idempotency.claim.duration', {
    description: 'From the call to its claim of the key, waiting for another call included',
    unit: 'ms',
  });
  const waits = meter.createHistogram('idempotency.wait.duration', {
    description: 'How long calls waited for another call that held their key (the waited events)',
    unit: 'ms',
  });
  const added = ({ type: outcome, method, route, mode }: IdempotencyEvent): Series => {
    let byMethod = byRoute.get(route);
    if (!byMethod) byRoute.set(route, (byMethod = new Map<string, MethodSeries>()));
    let byMode = byMethod.get(method);
    if (!byMode) byMethod.set(method, (byMode = { lease: new Map(), transactional: new Map() }));
    const created = { attributes: { outcome, method, route, mode }, count: 0 };
    byMode[mode].set(outcome, created);
    series.push(created);
    return created;
  };
  const seriesOf = (event: IdempotencyEvent): Series =>
    byRoute.get(event.route)?.get(event.method)?.[event.mode].get(event.type) ??
    (series.length < MAX_SERIES ? added(event) : overflow);
  return {
    record(event: IdempotencyEvent) {
      const counted = seriesOf(event);
      counted.count++;
      if (event.durationMs === undefined) return;
      if (event.type === 'claimed') claims.record(event.durationMs, counted.attributes);
      else if (event.type === 'waited') waits.record(event.durationMs, counted.attributes);
    },
  };
}
