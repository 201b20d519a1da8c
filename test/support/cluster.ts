import { setTimeout as sleep } from 'node:timers/promises';
import type { TestDatabase } from './database.js';
import { type SampleProcess, startSampleApp } from './sample-process.js';

/** Sample app processes on one test database, stopped (and resumed first, if paused) after each test. */
export class Cluster {
  private readonly started: SampleProcess[] = [];

  constructor(private readonly db: () => TestDatabase) {}

  async start(env: Record<string, string> = {}): Promise<SampleProcess> {
    const instance = await startSampleApp({ DATABASE_URL: this.db().url, ...env });
    this.started.push(instance);
    return instance;
  }

  startMany(count: number, env: Record<string, string> = {}): Promise<SampleProcess[]> {
    return Promise.all(Array.from({ length: count }, () => this.start(env)));
  }

  async stopAll(): Promise<void> {
    for (const instance of this.started.splice(0)) {
      instance.child.kill('SIGCONT');
      await instance.kill();
    }
  }

  async count(table: 'payments' | 'emails', user: string): Promise<number> {
    const { rows } = await this.db().pool.query(`SELECT count(*)::int AS n FROM ${table} WHERE user_id = $1`, [user]);
    return rows[0].n;
  }

  async record(key: string): Promise<any> {
    const { rows } = await this.db().pool.query('SELECT * FROM idempotency_keys WHERE idempotency_key = $1', [key]);
    return rows[0];
  }
}

export async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
