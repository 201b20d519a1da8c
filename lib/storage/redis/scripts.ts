import { createHash } from 'node:crypto';

/**
 * The Redis store's operations, each one Lua script: Redis runs a script atomically, so
 * every check-then-write below is one step that no other client can interleave with, and
 * costs one round trip. Each script touches exactly one key (KEYS[1], the record), so it
 * runs unchanged on a Redis Cluster.
 *
 * A record is a hash:
 *
 * | field | holds                                                        |
 * | ----- | ------------------------------------------------------------ |
 * | `s`   | status: `in_progress` or `completed`                         |
 * | `f`   | fingerprint                                                  |
 * | `o`   | owner token (only while `in_progress`)                       |
 * | `l`   | lease end, epoch ms (only while `in_progress`)               |
 * | `c`   | created at, epoch ms                                         |
 * | `d`   | completed at, epoch ms (only once `completed`)               |
 * | `e`   | expires at, epoch ms                                         |
 * | `r`   | the stored response, JSON (only once `completed`)            |
 * | `i`   | the identity, JSON `[scope, method, route, key]` (for people reading the data) |
 *
 * Time is the Redis server's (`TIME`), never an app instance's. The key's own expiry
 * (`PEXPIRE`) is kept at the moment the record stops counting (the later of its expiry
 * and, while in progress, its lease end), so expired records vanish by themselves and
 * every read sees only live ones. The scripts still compare the timestamps themselves,
 * as the state machine in `record.ts` does, so that they never depend on when Redis
 * evicts an expired key.
 */
export interface RedisScript {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
}

function script(name: string, body: string): RedisScript {
  const lua = NOW + body;
  return { name, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

/** The server's clock in ms; every script starts with it. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(n) return string.format('%.0f', n) end
-- The record counts while it has not expired, or while its lease runs.
local function live(status, locked, expires)
  local leaseLive = status == 'in_progress' and tonumber(locked) > now
  return tonumber(expires) > now or leaseLive, leaseLive
end
`;

/**
 * Claim: ARGV = fingerprint, owner token, lease ms, ttl ms, identity JSON, then the
 * fingerprints also accepted (the same request under previous secrets).
 * Returns `{1, now, fingerprint, takenOver}` when claimed (`takenOver` 1 when it took a
 * lapsed lease over, else 0), or `{0, now, leaseLapsed, s, f, o, l, c, d, e, r}` with the
 * live record that holds the key: the observed record of `decideClaim()`.
 */
export const CLAIM = script(
  'claim',
  `
local lease = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local r = redis.call('HMGET', KEYS[1], 's', 'f', 'o', 'l', 'c', 'd', 'e', 'r')
local fingerprint = ARGV[1]
local takenOver = 0
if r[1] then
  local isLive, leaseLive = live(r[1], r[4] or '0', r[7])
  if isLive then
    local same = r[2] == ARGV[1]
    for i = 6, #ARGV do
      if r[2] == ARGV[i] then same = true end
    end
    local lapsed = r[1] == 'in_progress' and not leaseLive
    -- decideClaim(): only a lapsed lease on the same request is taken over.
    if not same or not lapsed then
      return {0, now, lapsed and 1 or 0, r[1], r[2], r[3] or false, r[4] or false, r[5], r[6] or false, r[7], r[8] or false}
    end
    -- A take-over is the same request: it keeps the stored fingerprint.
    fingerprint = r[2]
    takenOver = 1
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 's', 'in_progress', 'f', fingerprint, 'o', ARGV[2], 'l', ms(now + lease), 'c', ms(now),
  'e', ms(now + ttl), 'i', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ms(math.max(lease, ttl)))
return {1, now, fingerprint, takenOver}
`,
);

/** The guard of complete, renew and release: the live in-progress record of this owner. */
const OWNED = `
local r = redis.call('HMGET', KEYS[1], 's', 'o', 'l', 'e')
if r[1] ~= 'in_progress' or r[2] ~= ARGV[1] then return 0 end
local isLive = live(r[1], r[3], r[4])
if not isLive then return 0 end
`;

/** Complete: ARGV = owner token, response JSON, ttl ms, channel. 1 if completed, 0 if fenced out. */
export const COMPLETE = script(
  'complete',
  `${OWNED}
local ttl = tonumber(ARGV[3])
redis.call('HDEL', KEYS[1], 'o', 'l')
redis.call('HSET', KEYS[1], 's', 'completed', 'r', ARGV[2], 'd', ms(now), 'e', ms(now + ttl))
redis.call('PEXPIRE', KEYS[1], ms(ttl))
redis.call('PUBLISH', ARGV[4], 'completed')
return 1
`,
);

/** Release: ARGV = owner token, channel. 1 if deleted, 0 if fenced out. */
export const RELEASE = script(
  'release',
  `${OWNED}
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'released')
return 1
`,
);

/** Renew: ARGV = owner token, lease ms. 1 if renewed, 0 if the lease was lost. */
export const RENEW = script(
  'renew',
  `${OWNED}
local locked = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'l', ms(locked))
redis.call('PEXPIRE', KEYS[1], ms(math.max(locked, tonumber(r[4])) - now))
return 1
`,
);

/** The fingerprint secret: ARGV = a fresh random one, kept only if none exists. Returns the one kept. */
export const SHARED_SECRET = script(
  'shared-secret',
  `
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
`,
);
