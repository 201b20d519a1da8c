import { describeStoreContract, ManualClock, MemoryIdempotencyStore } from 'nestjs-idempotency-postgres/testing';

// The store kit under Jest, from the CommonJS build (`require`): the contract suite a custom
// store's author runs, here against the memory store.
describeStoreContract(
  'memory, through nestjs-idempotency-postgres/testing',
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
