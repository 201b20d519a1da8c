import autocannon from 'autocannon';
import { randomUUID } from 'node:crypto';

export interface Stats {
  cpuMicros: number;
  rss: number;
  queries: number;
  /** Requests the app has answered. */
  requests: number;
}

export interface Measurement {
  variant: string;
  requests: number;
  rps: number;
  p50: number;
  p99: number;
  max: number;
  /** The app process's CPU time per request, in microseconds. */
  cpuPerRequest: number;
  /** SQL round trips the app sent per request (handler and library). */
  queriesPerRequest: number;
  /** Responses by status code. */
  statuses: Record<string, number>;
  errors: number;
  /** Bursts: handler executions per key used (1 = exactly once). */
  executionsPerKey?: number;
}

/** How each request of a run chooses its Idempotency-Key. */
export type KeyPlan =
  | { kind: 'none' }
  | { kind: 'fresh' }
  | { kind: 'cycle'; keys: string[] }
  | { kind: 'burst'; prefix: string; perKey: number };

export interface LoadOptions {
  variant: string;
  base: string;
  path: string;
  keys: KeyPlan;
  connections: number;
  durationSeconds: number;
  /** Fixed total request rate (moderate load); unset: as fast as possible. */
  rate?: number;
}

export const CHARGE = JSON.stringify({ amount: 1000, currency: 'EUR' });

const ratio = (part: number, whole: number) => (whole ? part / whole : 0);

export async function stats(base: string): Promise<Stats> {
  return (await fetch(base + '/__bench/stats')).json() as Promise<Stats>;
}

/**
 * Waits until the server has finished what the previous run left in flight (autocannon
 * stops sending, not the server working): no request answered and no query sent for a
 * while. Otherwise their rows and CPU would count towards the next run.
 */
export async function settle(base: string): Promise<void> {
  let last = await stats(base);
  for (let quiet = 0; quiet < 3;) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = await stats(base);
    quiet = now.requests === last.requests && now.queries === last.queries ? quiet + 1 : 0;
    last = now;
  }
}

function keyFor(plan: KeyPlan): () => string | undefined {
  let sent = 0;
  switch (plan.kind) {
    case 'none':
      return () => undefined;
    case 'fresh':
      return () => randomUUID();
    case 'cycle':
      return () => plan.keys[sent++ % plan.keys.length];
    case 'burst':
      // perKey consecutive requests share a key: with many connections they arrive together.
      return () => `${plan.prefix}-${Math.floor(sent++ / plan.perKey)}`;
  }
}

/** One autocannon run against the bench server, with the server's own counters around it. */
export async function measure(options: LoadOptions): Promise<Measurement> {
  await settle(options.base);
  const before = await stats(options.base);
  const nextKey = keyFor(options.keys);
  const headers = { 'content-type': 'application/json' };
  const result = await autocannon({
    url: options.base,
    connections: options.connections,
    duration: options.durationSeconds,
    overallRate: options.rate,
    requests: [
      {
        method: 'POST',
        path: options.path,
        headers,
        body: CHARGE,
        setupRequest: (request: autocannon.Request) => {
          const key = nextKey();
          return key === undefined ? request : { ...request, headers: { ...headers, 'idempotency-key': key } };
        },
      },
    ],
  });
  const after = await stats(options.base);
  const requests = result.requests.total;
  const statuses: Record<string, number> = {};
  for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = stat.count ?? 0;
  return {
    variant: options.variant,
    requests,
    rps: requests / (result.duration || options.durationSeconds),
    p50: result.latency.p50,
    p99: result.latency.p99,
    max: result.latency.max,
    cpuPerRequest: requests ? (after.cpuMicros - before.cpuMicros) / requests : 0,
    queriesPerRequest: ratio(after.queries - before.queries, after.requests - before.requests),
    statuses,
    errors: result.errors + result.timeouts,
  };
}
