import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { BROKER_URLS, describeWithBrokers } from '../support/brokers.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { deleteKeys, testPrefix } from '../support/redis-store.js';

const run = promisify(execFile);
const describeRedis = await describeWithBrokers(['redis']);

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The CommonJS build as `npm run build:package` makes it, inside the project so that its node_modules resolve. */
const OUT = `${ROOT}dist/cjs-check`;
const CHECK = fileURLToPath(new URL('../support/cjs-check.cjs', import.meta.url));

/**
 * The ES module build is what every other suite runs (and redis-app-process.ts starts it
 * with typeorm unloadable); this suite checks the CommonJS build, which loads optional
 * peers through require().
 */
describeRedis('the CommonJS build loads only the store it uses', () => {
  let redis: Redis;
  let db: TestDatabase;
  const prefix = testPrefix('cjs');

  beforeAll(async () => {
    redis = new Redis(BROKER_URLS.redis);
    db = await createTestDatabase();
    await run(
      process.execPath,
      [`${ROOT}node_modules/typescript/bin/tsc`, '-p', 'tsconfig.package.cjs.json', '--outDir', OUT],
      {
        cwd: ROOT,
      },
    );
    writeFileSync(`${OUT}/package.json`, '{"type": "commonjs"}\n');
  }, 180_000);
  afterAll(async () => {
    rmSync(OUT, { recursive: true, force: true });
    await deleteKeys(redis, prefix);
    await redis?.quit();
    await db?.drop();
  });

  async function check(env: Record<string, string>) {
    const { stdout } = await run(process.execPath, [CHECK, `${OUT}/lib/index.js`], {
      env: { ...process.env, KEY_PREFIX: prefix, ...env },
    });
    return JSON.parse(stdout.trim().split('\n').pop()!);
  }

  it('on the Redis store, with typeorm, @nestjs/typeorm and pg unloadable: runs once, replays', async () => {
    const result = await check({ STORE: 'redis', REDIS_URL: BROKER_URLS.redis });
    expect(result).toEqual({ first: { run: 1 }, second: { run: 1 }, runs: 1, typeormLoaded: false });
  }, 60_000);

  it('on the default PostgreSQL store: @nestjs/typeorm is required when the module is scanned', async () => {
    const result = await check({ STORE: 'postgres', DATABASE_URL: db.url });
    expect(result).toMatchObject({ first: { run: 1 }, second: { run: 1 }, runs: 1 });
  }, 60_000);
});
