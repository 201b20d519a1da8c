import { describe, it } from '@jest/globals';
import { appendFileSync } from 'node:fs';
import { connect } from 'node:net';

/** The services broker suites need, and where they are (this machine's defaults; CI runs against them). */
export const BROKER_URLS = {
  rabbitmq: process.env.RABBITMQ_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
  nats: process.env.NATS_URL ?? 'nats://127.0.0.1:4222',
  redis: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
} as const;

export type Broker = keyof typeof BROKER_URLS;

/** Whether something accepts TCP connections at the broker's host and port. */
export function reachable(broker: Broker, timeoutMs = 1500): Promise<boolean> {
  const url = new URL(BROKER_URLS[broker]);
  const port = Number(url.port || { rabbitmq: 5672, nats: 4222, redis: 6379 }[broker]);
  return new Promise((resolve) => {
    const socket = connect({ host: url.hostname, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * `describe` for a suite that needs brokers. When one is unreachable, the suite does not
 * run and is never counted as passed: with `REQUIRE_BROKERS=1` (CI) it fails; otherwise
 * it is skipped, and the run ends with a notice naming it (see global-teardown.ts).
 */
export async function describeWithBrokers(brokers: Broker[]): Promise<typeof describe> {
  const missing: Broker[] = [];
  for (const broker of brokers) if (!(await reachable(broker))) missing.push(broker);
  if (missing.length === 0) return describe;
  const why = missing.map((broker) => `${broker} at ${BROKER_URLS[broker]} is unreachable`).join('; ');
  return describeNotRun(`needs ${missing.join(' and ')}`, why, process.env.REQUIRE_BROKERS === '1');
}

/**
 * The `describe` of a suite whose service or tool is missing (`why`): a failing suite when
 * it is `required` (CI), else a skipped one that prints a notice and is named in the
 * banner at the end of the run (see global-teardown.ts), never counted as passed.
 */
export function describeNotRun(needs: string, why: string, required: boolean): typeof describe {
  if (required) {
    return ((title: string) =>
      describe(title, () => {
        it(needs, () => {
          throw new Error(`${why} (required here: this suite must run)`);
        });
      })) as unknown as typeof describe;
  }
  return ((title: string, body: () => void) => {
    const line = `${title}: NOT RUN, ${why}`;
    console.warn(line);
    if (process.env.SKIPPED_SUITES_FILE) appendFileSync(process.env.SKIPPED_SUITES_FILE, line + '\n');
    describe.skip(title, body);
  }) as unknown as typeof describe;
}
