import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import {
  describeStoreContract,
  HOUR,
  identity,
  ManualClock,
  MemoryIdempotencyStore,
  MINUTE,
  request,
  RESPONSE,
  won,
} from '../../lib/testing/index.js';

describeStoreContract(
  'memory',
  async () => {
    const clock = new ManualClock();
    return {
      store: new MemoryIdempotencyStore(clock.now),
      advance: async (ms) => clock.advance(ms),
      teardown: async () => {},
    };
  },
  { describe, it, beforeEach, afterEach, expect },
);

describe('MemoryIdempotencyStore sweeps expired records', () => {
  async function claimAndComplete(store: MemoryIdempotencyStore, ttlMs: number) {
    const claim = request(identity(), { ttlMs });
    won(await store.claim(claim));
    expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, ttlMs)).toBe(true);
    return claim.identity;
  }

  it('never holds more than sweepEvery records when each expires before the next claim', async () => {
    const clock = new ManualClock();
    const store = new MemoryIdempotencyStore(clock.now, 10);
    for (let i = 0; i < 200; i++) {
      await claimAndComplete(store, MINUTE);
      clock.advance(2 * MINUTE);
      expect(store.size).toBeLessThanOrEqual(10);
    }
  });

  it('the sweep on every sweepEvery-th claim deletes the expired records and keeps the live ones', async () => {
    const clock = new ManualClock();
    const store = new MemoryIdempotencyStore(clock.now, 5);
    const live = [await claimAndComplete(store, HOUR), await claimAndComplete(store, HOUR)];
    const inFlight = request(identity(), { ttlMs: MINUTE });
    won(await store.claim(inFlight));
    await claimAndComplete(store, MINUTE); // 4th claim
    clock.advance(MINUTE / 2);
    expect(await store.renew(inFlight.identity, inFlight.ownerToken, HOUR)).toBe(true);
    clock.advance(MINUTE); // the 4th record expired; the in-flight one is past expiry under a live lease
    expect(store.size).toBe(4);

    await claimAndComplete(store, MINUTE); // 5th claim: sweeps first, then adds its own record
    expect(store.size).toBe(4);
    for (const id of live) expect(await store.find(id)).not.toBeNull();
    expect((await store.find(inFlight.identity))?.ownerToken).toBe(inFlight.ownerToken);
  });

  it('does not sweep before the sweepEvery-th claim', async () => {
    const clock = new ManualClock();
    const store = new MemoryIdempotencyStore(clock.now, 5);
    for (let i = 0; i < 4; i++) {
      await claimAndComplete(store, MINUTE);
      clock.advance(2 * MINUTE);
    }
    // Expired records count as absent even while they are still held.
    expect(store.size).toBe(4);
    await claimAndComplete(store, MINUTE);
    expect(store.size).toBe(1);
  });
});
