import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, post, type TestDatabase } from './test-database.js';

// The app as `tsc` built it (npm test builds first), run as a process of its own.
const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));

let db: TestDatabase;
const children: ChildProcess[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
});

afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  }
});

afterAll(async () => {
  await db?.drop();
});

async function start(env: Record<string, string> = {}): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [MAIN], {
    env: { ...process.env, DATABASE_URL: db.url, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (\S+)/.exec(output);
      if (match) resolve(match[1].replace('[::1]', '127.0.0.1'));
    });
    child.once('exit', (code) => reject(new Error(`the app exited with ${code} before listening:\n${output}`)));
  });
  return { child, url };
}

/** Whether some backend holds an uncommitted write on payments (the blocked handler's). */
async function paymentWritten(): Promise<boolean> {
  const { rows } = await db.pool.query(
    `SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
     WHERE c.relname = 'payments' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
  );
  return rows.length > 0;
}

it('kill -9 while the handler holds its written payment: the retry on another process pays once', async () => {
  const reference = randomUUID();
  const key = randomUUID();
  const body = { reference, amount: 1200 };

  // Both processes start at once: the second takes the retry after the first is killed.
  const [victim, survivor] = await Promise.all([start({ PAYMENTS_HOLD_MS: '60000' }), start()]);
  const doomed = post(victim.url, '/payments', body, key).catch(() => 'connection lost');
  for (let tries = 0; !(await paymentWritten()); tries++) {
    if (tries > 200) throw new Error('the payment row was never written');
    await sleep(25);
  }
  victim.child.kill('SIGKILL');
  await once(victim.child, 'exit');
  expect(await doomed).toBe('connection lost');

  // The first request never committed: no lease to wait out, the retry runs the handler.
  const retry = await post(survivor.url, '/payments', body, key);
  expect(retry.status).toBe(201);
  expect(retry.replayed).toBeNull();
  expect(await db.count('payments WHERE reference = $1', [reference])).toBe(1);
  expect(await db.record(key)).toMatchObject({ status: 'completed', response: { status: 201, body: retry.body } });

  const replay = await post(survivor.url, '/payments', body, key);
  expect(replay).toEqual({ ...retry, replayed: 'true' });
  expect(await db.count('payments WHERE reference = $1', [reference])).toBe(1);
});
