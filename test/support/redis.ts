import { Redis } from 'ioredis';

/**
 * A Redis connection as BullMQ takes it under ESM: an instance, since its ES module build
 * cannot load ioredis by itself, and with no per-request retry limit (its blocking
 * connections refuse one).
 */
export function redisConnection(url: string): Redis {
  return new Redis(url, { maxRetriesPerRequest: null });
}
