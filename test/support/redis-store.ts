import { randomUUID } from 'node:crypto';
import { Cluster, type Redis } from 'ioredis';
import type { RedisClient } from '../../lib/index.js';

/**
 * A key prefix of a test's own, so that tests share the machine's Redis (and each other's
 * clusters) without seeing each other's records; `deleteKeys` removes them afterwards.
 */
export function testPrefix(name = 'test'): string {
  return `idem-${name}:${randomUUID().slice(0, 8)}:`;
}

/** The servers that hold keys: the masters of a cluster, or the one server. */
function servers(client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes('master') : [client];
}

async function keysOf(client: RedisClient, prefix: string): Promise<{ server: Redis; key: string }[]> {
  const found: { server: Redis; key: string }[] = [];
  for (const server of servers(client)) {
    let cursor = '0';
    do {
      const [next, keys] = await server.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) found.push({ server, key });
    } while (cursor !== '0');
  }
  return found;
}

export async function deleteKeys(client: RedisClient, prefix: string): Promise<number> {
  const keys = await keysOf(client, prefix);
  for (const { server, key } of keys) await server.del(key);
  return keys.length;
}

/**
 * Moves every timestamp of a record back by ARGV[1] ms and shortens the key's expiry by as
 * much, deleting the key when that expiry has passed: what Redis would show after that
 * much time, as the PostgreSQL harness moves the rows' timestamps back.
 */
const SHIFT = `
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local shift = tonumber(ARGV[1])
for _, field in ipairs({'c', 'l', 'd', 'e'}) do
  local value = redis.call('HGET', KEYS[1], field)
  if value then redis.call('HSET', KEYS[1], field, string.format('%.0f', tonumber(value) - shift)) end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  if ttl <= shift then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ttl - shift) end
end
return 1
`;

/** Lets `ms` pass for the records under `prefix`, as their store sees them (see SHIFT). */
export async function advanceRedisClock(client: RedisClient, prefix: string, ms: number): Promise<void> {
  for (const { server, key } of await keysOf(client, prefix)) await server.eval(SHIFT, 1, key, String(ms));
}
