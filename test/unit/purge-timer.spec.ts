import { describe, expect, it } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { setTimeout as sleep } from 'node:timers/promises';
import { IdempotencyModule, MemoryIdempotencyStore, type PurgeOptions } from '../../lib/index.js';

/** A memory store whose purge takes longer than the purge interval, as a large backlog would. */
@Injectable()
class SlowPurgeStore extends MemoryIdempotencyStore {
  static running = 0;
  static mostAtOnce = 0;
  static started = 0;

  override async purgeExpired(options?: PurgeOptions): Promise<number> {
    SlowPurgeStore.started++;
    SlowPurgeStore.mostAtOnce = Math.max(SlowPurgeStore.mostAtOnce, ++SlowPurgeStore.running);
    try {
      await sleep(2500);
      return await super.purgeExpired(options);
    } finally {
      SlowPurgeStore.running--;
    }
  }
}

describe('the purge timer', () => {
  // Overlapping purges would compete for the same rows and pile up under a backlog.
  it('never starts a purge while the previous one still runs', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [IdempotencyModule.forRoot({ store: SlowPurgeStore, purgeIntervalMs: 1000 })],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    try {
      await sleep(4300); // ticks at about 1, 2, 3 and 4 s; the first purge runs from 1 s to 3.5 s
      // Without the guard: four purges started, three at once.
      expect(SlowPurgeStore.mostAtOnce).toBe(1);
      expect(SlowPurgeStore.started).toBeGreaterThanOrEqual(1);
      expect(SlowPurgeStore.started).toBeLessThanOrEqual(2); // the ticks at 2 and 3 s were skipped
    } finally {
      await app.close();
    }
  });
});
