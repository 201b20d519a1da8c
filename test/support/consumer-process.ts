import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { waitFor } from './cluster.js';
import type { ConsumerSettings, Observation } from './message-app.js';

const ENTRY = fileURLToPath(new URL('./message-consumer.js', import.meta.url));

/** What a consumer reported, in order, and a way to wait for what it has not reported yet. */
export class Observations {
  readonly list: Observation[] = [];

  readonly add = (observation: Observation): void => {
    this.list.push(observation);
  };

  count(match: Partial<Observation>): number {
    return this.list.filter((observation) =>
      Object.entries(match).every(([name, value]) => observation[name as keyof Observation] === value),
    ).length;
  }

  /** Resolves once `count(match)` reaches `count`; fails after `timeoutMs` with what was seen. */
  async until(match: Partial<Observation>, count = 1, timeoutMs = 20_000): Promise<void> {
    await waitFor(async () => Promise.resolve(this.count(match) >= count), describeWait(match, count, this), timeoutMs);
  }
}

function describeWait(match: Partial<Observation>, count: number, seen: Observations): string {
  return `${count} × ${JSON.stringify(match)} (seen: ${seen.count(match)}; all: ${JSON.stringify(seen.list)})`;
}

export interface ConsumerProcess {
  child: ChildProcess;
  observations: Observations;
  /** Everything the process printed that is not an observation, for failure messages. */
  output(): string;
  /** SIGTERM: the app closes its broker connection, which returns unacknowledged messages to the queue. */
  stop(): Promise<void>;
  /** SIGKILL: no clean-up at all, as in a crash. */
  crash(): Promise<void>;
}

/** Starts message-consumer.js as a real process and waits for its `ready` line. */
export async function startConsumerProcess(settings: ConsumerSettings): Promise<ConsumerProcess> {
  const child = spawn(process.execPath, [ENTRY], {
    env: { ...process.env, NO_COLOR: '1', CONSUMER_SETTINGS: JSON.stringify(settings) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const observations = new Observations();
  let output = '';
  let pending = '';
  child.stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('@@')) observations.add(JSON.parse(line.slice(2)) as Observation);
      else output += line + '\n';
    }
  });
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ready = observations.until({ event: 'ready' }, 1, 30_000);
  const failed = exited.then(() => {
    throw new Error(`consumer exited with ${child.exitCode ?? child.signalCode} before it was ready:\n${output}`);
  });
  // Only the race reads it: an exit after the ready line is no failure of the start.
  failed.catch(() => {});
  try {
    await Promise.race([ready, failed]);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    // A process that does not stop in time is killed, so that no test leaves one behind.
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  return { child, observations, output: () => output, stop: () => end('SIGTERM'), crash: () => end('SIGKILL') };
}
