import 'reflect-metadata';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { DataSource } from 'typeorm';
import { type IdempotencyStore, PostgresIdempotencyStore, RedisIdempotencyStore } from '../lib/index.js';
import { benchDatabase } from './database.js';
import { CHARGE, type KeyPlan, type Measurement, measure, settle, stats } from './load.js';
import { type BenchResults, compare, writeReport } from './report.js';

/**
 * `npm run bench [-- --quick]`: measures what idempotency costs against a baseline of the
 * same handler, in one process run so that machine noise hits every variant alike.
 */
const quick = process.argv.includes('--quick');
const settings = quick
  ? { rounds: 2, seconds: 2, connections: 50, burstConnections: 50, records: 50_000, moderateRate: 100 }
  : { rounds: 3, seconds: 6, connections: 50, burstConnections: 50, records: 1_000_000, moderateRate: 100 };
/** Load levels beside the main one, to show how the cost grows with concurrency. */
const SCALING_CONNECTIONS = [10, 100];
/** Clients of the large duplicate burst, all on one key at a time. */
const LARGE_BURST = 200;

let db: DataSource;

const SERVER = fileURLToPath(new URL('./server.js', import.meta.url));
const REPLAY_KEYS = 200;
/** Moderate load: few connections at a fixed rate, so latency shows cost, not queueing. */
const MODERATE_CONNECTIONS = 4;

interface Variant {
  name: string;
  path: string;
  keys: (round: number) => KeyPlan;
  /** The bench app whose lease-mode records are in Redis, instead of the PostgreSQL one. */
  redis?: boolean;
  /** The bench app with events and metrics on (an onEvent listener, OpenTelemetry metrics). */
  observed?: boolean;
}

/** The third bench app: the first one's with events and metrics on. */
let observedBase: string | undefined;

/** The second bench app, on the Redis store, when a Redis server answers. */
let redisBase: string | undefined;
/** The records of that app, read as it reads them. */
let redisRecords: IdempotencyStore | undefined;

/** Keys `<prefix>-0`, `<prefix>-1`, … that have a record in Redis (a burst uses them in order). */
async function redisKeysUsed(route: string, prefix: string): Promise<number> {
  let used = 0;
  while (await redisRecords!.find({ scope: 'bench', method: 'POST', route, key: `${prefix}-${used}` })) used++;
  return used;
}

async function main(): Promise<void> {
  const started = Date.now();
  const database = await benchDatabase('idem_bench_');
  const url = database.url;
  const dataSource = new DataSource({ type: 'postgres', url });
  await dataSource.initialize();
  db = dataSource;
  const server = await startServer(url);
  const redis = await redisServer(url);
  redisBase = redis?.server.url;
  const observed = await startServer(url, { BENCH_OBSERVABILITY: '1' });
  observedBase = observed.url;
  try {
    const base = server.url;
    log(`bench app on ${base}; ${quick ? 'quick' : 'full'} run: ${JSON.stringify(settings)}`);
    const keys = {
      lease: await completeKeys(base, '/lease/payments', 'replay-lease'),
      tx: await completeKeys(base, '/tx/payments', 'replay-tx'),
    };
    const fresh = (): KeyPlan => ({ kind: 'fresh' });
    const variants: Variant[] = [
      { name: 'baseline', path: '/baseline/payments', keys: () => ({ kind: 'none' }) },
      { name: 'lease: first', path: '/lease/payments', keys: fresh },
      { name: 'transactional: first', path: '/tx/payments', keys: fresh },
      // The same three with a handler that sends one INSERT through a pg pool.
      { name: 'baseline (INSERT)', path: '/baseline/inserts', keys: () => ({ kind: 'none' }) },
      { name: 'lease: first (INSERT)', path: '/lease/inserts', keys: fresh },
      { name: 'transactional: first (INSERT)', path: '/tx/inserts', keys: fresh },
      { name: 'lease: replay', path: '/lease/payments', keys: () => ({ kind: 'cycle', keys: keys.lease }) },
      { name: 'transactional: replay', path: '/tx/payments', keys: () => ({ kind: 'cycle', keys: keys.tx }) },
      // Every connection on one key: replays must not queue behind one another.
      {
        name: 'lease: replay, one hot key',
        path: '/lease/payments',
        keys: () => ({ kind: 'cycle', keys: keys.lease.slice(0, 1) }),
      },
      {
        name: 'transactional: replay, one hot key',
        path: '/tx/payments',
        keys: () => ({ kind: 'cycle', keys: keys.tx.slice(0, 1) }),
      },
    ];
    if (redis) {
      const redisKeys = await completeKeys(redisBase!, '/lease/payments', 'replay-redis');
      variants.push(
        { name: 'Redis: first', path: '/lease/payments', keys: fresh, redis: true },
        { name: 'Redis: first (INSERT)', path: '/lease/inserts', keys: fresh, redis: true },
        {
          name: 'Redis: replay',
          path: '/lease/payments',
          keys: () => ({ kind: 'cycle', keys: redisKeys }),
          redis: true,
        },
        {
          name: 'Redis: replay, one hot key',
          path: '/lease/payments',
          keys: () => ({ kind: 'cycle', keys: redisKeys.slice(0, 1) }),
          redis: true,
        },
      );
    } else {
      log('no Redis server answers (REDIS_URL, or 127.0.0.1:6379): the Redis store variants are NOT measured');
    }
    variants.push(
      { name: 'lease: first, events + metrics', path: '/lease/payments', keys: fresh, observed: true },
      { name: 'transactional: first, events + metrics', path: '/tx/payments', keys: fresh, observed: true },
    );
    const firsts = variants.slice(0, 3);
    const bursts: Variant[] = [
      {
        name: 'burst: wait (transactional)',
        path: '/tx/payments',
        keys: (r) => ({ kind: 'burst', prefix: `wait-${r}`, perKey: settings.burstConnections }),
      },
      {
        name: 'burst: reject (lease)',
        path: '/lease/payments',
        keys: (r) => ({ kind: 'burst', prefix: `reject-${r}`, perKey: settings.burstConnections }),
      },
      {
        name: `burst: ${LARGE_BURST} clients (transactional, wait)`,
        path: '/tx/payments',
        keys: (r) => ({ kind: 'burst', prefix: `large-${r}`, perKey: LARGE_BURST }),
      },
    ];
    if (redis) {
      bursts.push({
        name: 'burst: reject (Redis)',
        path: '/lease/payments',
        keys: (r) => ({ kind: 'burst', prefix: `redis-${r}`, perKey: settings.burstConnections }),
        redis: true,
      });
    }
    const connectionsOf = (variant: Variant) =>
      variant === bursts[2] ? LARGE_BURST : bursts.includes(variant) ? settings.burstConnections : settings.connections;

    log('warming up');
    // Each bench app gets as much warm-up as the first one: compiled code is per process, and
    // a process that has served fewer requests spends more CPU on each for tens of seconds,
    // which would be charged to its variants (the Redis store, events + metrics).
    const appOf = (variant: Variant) => (variant.redis ? 'redis' : variant.observed ? 'observed' : 'first');
    const perApp = new Map<string, Variant[]>();
    for (const variant of variants) perApp.set(appOf(variant), [...(perApp.get(appOf(variant)) ?? []), variant]);
    const firstAppVariants = perApp.get('first')!.length;
    for (const appVariants of perApp.values()) {
      const repeats = Math.ceil(firstAppVariants / appVariants.length);
      for (let repeat = 0; repeat < repeats; repeat++) {
        for (const variant of appVariants)
          await run(base, variant, 0, Math.min(settings.seconds, 2), settings.connections);
      }
    }
    const rssAtStart = (await stats(base)).rss;

    log('throughput, interleaved rounds');
    const throughput = await interleaved(base, [...variants, ...bursts], settings.rounds, connectionsOf);

    const scaling: BenchResults['scaling'] = [];
    for (const connections of SCALING_CONNECTIONS) {
      log(`first executions at ${connections} connections`);
      const rows = await interleaved(base, firsts, Math.max(1, settings.rounds - 1), () => connections);
      scaling.push({ connections, rows: compare(rows) });
    }

    log(`moderate load: ${settings.moderateRate} requests/s`);
    const moderate = await interleaved(
      base,
      variants.slice(0, 6),
      quick ? 1 : settings.rounds,
      () => MODERATE_CONNECTIONS,
      settings.moderateRate,
    );

    log(`growth: ${settings.records.toLocaleString('en')} live records`);
    await fill(dataSource, settings.records, 'live');
    const grownVariants = variants.filter(
      (v) => !v.name.includes('INSERT') && !v.name.includes('hot key') && !v.redis && !v.observed,
    );
    const grown = await interleaved(base, grownVariants, Math.max(1, settings.rounds - 1), () => settings.connections);

    log(`purge: ${settings.records.toLocaleString('en')} expired records, under moderate load`);
    const purge = await purgeUnderLoad(base, dataSource, variants[1]);
    const rssAtEnd = (await stats(base)).rss;

    const results: BenchResults = {
      quick,
      settings,
      durationSeconds: 0,
      machine: await machine(dataSource),
      throughput: compare(throughput),
      scaling,
      moderate: compare(moderate),
      grown: compare(grown),
      purge,
      rss: { start: rssAtStart, end: rssAtEnd },
    };
    results.durationSeconds = Math.round((Date.now() - started) / 1000);
    const written = await writeReport(results);
    log(`wrote ${written.join(', ')} in ${results.durationSeconds} s`);
  } finally {
    server.child.kill('SIGTERM');
    observed.child.kill('SIGTERM');
    await redis?.stop();
    await dataSource.destroy();
    await database.drop();
  }
}

/** Runs every variant once per round, in an order rotated each round: A B C, B C A, … */
async function interleaved(
  base: string,
  variants: Variant[],
  rounds: number,
  connections: (variant: Variant) => number,
  rate?: number,
): Promise<Measurement[][]> {
  const perRound: Measurement[][] = [];
  for (let round = 0; round < rounds; round++) {
    const results: Measurement[] = [];
    for (let i = 0; i < variants.length; i++) {
      const variant = variants[(i + round) % variants.length];
      results.push(await run(base, variant, round + 1, settings.seconds, connections(variant), rate));
    }
    perRound.push(results);
    log(`  round ${round + 1}: ` + results.map((m) => `${m.variant} ${Math.round(m.rps)}/s`).join(', '));
  }
  return perRound;
}

async function run(app: string, variant: Variant, round: number, seconds: number, connections: number, rate?: number) {
  const base = variant.redis ? redisBase! : variant.observed ? observedBase! : app;
  const keys = variant.keys(round);
  const payments = async () => Number((await db.query('SELECT count(*) AS n FROM payments'))[0].n);
  if (keys.kind === 'burst') await settle(base);
  const before = keys.kind === 'burst' ? await payments() : 0;
  const result = await measure({
    variant: variant.name,
    base,
    path: variant.path,
    keys,
    connections,
    durationSeconds: seconds,
    rate,
  });
  if (keys.kind === 'burst') {
    await settle(base);
    // Handler executions (one payment row each) per key used: 1 means every key ran once.
    // Keys used: their records (PostgreSQL), or from the requests sent (Redis).
    const [{ n }] = await db.query('SELECT count(*) AS n FROM idempotency_keys WHERE idempotency_key LIKE $1', [
      keys.prefix + '-%',
    ]);
    const used = variant.redis ? await redisKeysUsed(variant.path, keys.prefix) : Number(n);
    result.executionsPerKey = ((await payments()) - before) / Math.max(1, used);
  }
  return result;
}

/** Keys whose records are completed, for the replay variants. */
async function completeKeys(base: string, path: string, prefix: string): Promise<string[]> {
  const keys = Array.from({ length: REPLAY_KEYS }, (_, i) => `${prefix}-${i}`);
  for (const key of keys) {
    const response = await fetch(base + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      body: CHARGE,
    });
    if (response.status !== 201) throw new Error(`preparing ${key}: ${response.status} ${await response.text()}`);
  }
  return keys;
}

/**
 * Bulk-loads records, as a long-running service accumulates them. The load runs with
 * session_replication_role = replica, which skips the transition trigger: it inserts
 * completed records directly instead of claiming and completing each.
 */
async function fill(dataSource: DataSource, count: number, kind: 'live' | 'expired'): Promise<void> {
  const expires = kind === 'live' ? "now() + interval '1 day'" : "now() - interval '1 minute'";
  const runner = dataSource.createQueryRunner();
  try {
    await runner.startTransaction();
    await runner.query('SET LOCAL session_replication_role = replica');
    await runner.query(
      `INSERT INTO idempotency_keys (scope, method, route, idempotency_key, fingerprint, status, response, completed_at, expires_at)
       SELECT 'user-' || (i % 5000), 'POST', '/lease/payments', md5($1 || i), md5(i::text), 'completed',
              '{"status":201,"headers":{},"kind":"json","body":"{\\"id\\":1}"}', now(), ${expires}
       FROM generate_series(1, $2::int) AS i`,
      [kind, count],
    );
    await runner.commitTransaction();
  } finally {
    await runner.release();
  }
  await dataSource.query('VACUUM ANALYZE idempotency_keys');
}

/** Purges expired records with the library's own batched purge while live requests run. */
async function purgeUnderLoad(base: string, dataSource: DataSource, live: Variant): Promise<BenchResults['purge']> {
  const calm = await run(base, live, 0, settings.seconds, MODERATE_CONNECTIONS, settings.moderateRate);
  await fill(dataSource, settings.records, 'expired');
  const store = new PostgresIdempotencyStore(dataSource);
  const batchSize = 1000;
  const started = Date.now();
  let purged: number | undefined;
  // The library's defaults: batches of 1000 rows, a 10 ms pause between batches.
  const purging = store.purgeExpired({ batchSize }).then((n) => (purged = n));
  const during: Measurement[] = [];
  while (purged === undefined) during.push(await run(base, live, 0, 2, MODERATE_CONNECTIONS, settings.moderateRate));
  await purging;
  return {
    records: purged,
    batchSize,
    seconds: (Date.now() - started) / 1000,
    calmMaxMs: calm.max,
    calmP99Ms: calm.p99,
    duringMaxMs: Math.max(...during.map((m) => m.max)),
    duringP99Ms: Math.max(...during.map((m) => m.p99)),
    duringErrors: during.reduce((sum, m) => sum + m.errors + (m.requests - (m.statuses['201'] ?? 0)), 0),
  };
}

async function machine(dataSource: DataSource): Promise<BenchResults['machine']> {
  const os = await import('node:os');
  const [{ server_version: version }] = await dataSource.query('SHOW server_version');
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres: version,
    date: new Date().toISOString().slice(0, 10),
  };
}

async function startServer(
  url: string,
  env: Record<string, string> = {},
): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, DATABASE_URL: url, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on port (\d+)/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    child.once('exit', (code) => reject(new Error(`bench server exited with ${code}: ${output}`)));
  });
  return { url: `http://127.0.0.1:${port}`, child };
}

/**
 * A second bench app whose lease-mode records are in Redis (transactional ones stay in
 * PostgreSQL), under a key prefix of this run's, deleted at the end.
 */
async function redisServer(url: string): Promise<{ server: { url: string }; stop: () => Promise<void> } | undefined> {
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const { Redis } = await import('ioredis');
  const client = new Redis(redisUrl, { lazyConnect: true, connectTimeout: 1000, maxRetriesPerRequest: 0 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
  } catch {
    client.disconnect();
    return undefined;
  }
  const prefix = `bench-${randomBytes(4).toString('hex')}:`;
  const server = await startServer(url, { BENCH_REDIS_URL: redisUrl, BENCH_REDIS_PREFIX: prefix });
  redisRecords = await RedisIdempotencyStore.create({ connection: client, keyPrefix: prefix });
  log(`Redis store bench app on ${server.url} (${redisUrl}, keys ${prefix}*)`);
  return {
    server,
    stop: async () => {
      server.child.kill('SIGTERM');
      for (let cursor = '0'; ;) {
        const [next, found] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        if (found.length > 0) await client.del(...found);
        if ((cursor = next) === '0') break;
      }
      client.disconnect();
    },
  };
}

function log(message: string): void {
  console.log(`[bench] ${message}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
