import { randomUUID } from 'node:crypto';
import type { IdempotencyRecord, RecordIdentity, StoredResponse } from '../core/record.js';
import { type ClaimRequest, type ClaimResult, IdempotencyStore } from '../storage/idempotency.store.js';
import { HOUR, identity, LEASE, lost, MINUTE, request, RESPONSE, SECOND, won } from './store-fixtures.js';

/**
 * The assertions the contract makes: Jest's `expect` and Vitest's both fit. The contract
 * is written against this, not against a test framework, so that a store's author runs it
 * under the framework of their project.
 */
export interface ContractMatchers {
  toBe(expected: unknown): void;
  toEqual(expected: unknown): void;
  toMatchObject(expected: object): void;
  toBeNull(): void;
  toBeGreaterThan(expected: number): void;
  toBeGreaterThanOrEqual(expected: number): void;
  toHaveLength(expected: number): void;
  readonly not: Pick<ContractMatchers, 'toBe' | 'toEqual' | 'toBeNull'>;
}

/** The test framework's functions the contract uses: pass `{ describe, it, beforeEach, afterEach, expect }`. */
export interface ContractTestApi {
  describe: (name: string, body: () => void) => void;
  it: (name: string, body: () => Promise<void>) => void;
  beforeEach: (body: () => Promise<void>) => void;
  afterEach: (body: () => Promise<void>) => void;
  expect: (actual: unknown) => ContractMatchers;
}

/** What the contract needs from a store under test. */
export interface StoreHarness {
  /** A store holding no records. */
  readonly store: IdempotencyStore;
  /**
   * Lets `ms` pass on the store's clock: leases lapse and records expire exactly as they
   * would after that much time. Stores compare against their own clock (the database's
   * for PostgreSQL), never the test's, so this is the only way a scenario makes time pass.
   */
  advance(ms: number): Promise<void>;
  teardown(): Promise<void>;
  /**
   * The store's records vanish by themselves when they expire (Redis key expiry), so
   * `purgeExpired()` never finds any: the purge scenarios expect 0 from it.
   */
  readonly expiresNatively?: boolean;
}

/** Whether a claim won the key by taking a lapsed lease over. */
function tookOver(result: ClaimResult): boolean {
  return result.claimed && result.takenOver === true;
}

/**
 * The guarantees of `IdempotencyStore` (see its doc comment), run against one store.
 * `setup` is called before every scenario and must hand out an empty store.
 */
export function describeStoreContract(
  name: string,
  setup: () => Promise<StoreHarness>,
  { describe, it, beforeEach, afterEach, expect }: ContractTestApi,
): void {
  describe(`IdempotencyStore contract: ${name}`, () => {
    let harness: StoreHarness;
    let store: IdempotencyStore;

    beforeEach(async () => {
      harness = await setup();
      store = harness.store;
    });
    afterEach(async () => harness.teardown());

    /** Claims a key and completes it with RESPONSE; the record lives for `ttlMs` from now. */
    async function completed(ttlMs: number): Promise<{ id: RecordIdentity; claim: ClaimRequest }> {
      const id = identity();
      const claim = request(id, { ttlMs });
      won(await store.claim(claim));
      expect(await store.complete(id, claim.ownerToken, RESPONSE, ttlMs)).toBe(true);
      return { id, claim };
    }

    /** complete, renew and release with `token` all fail and leave the record as it was. */
    async function expectFencedOut(id: RecordIdentity, token: string): Promise<void> {
      const before = await store.find(id);
      expect(await store.complete(id, token, { ...RESPONSE, status: 500 }, HOUR)).toBe(false);
      expect(await store.renew(id, token, HOUR)).toBe(false);
      expect(await store.release(id, token)).toBe(false);
      expect(await store.find(id)).toEqual(before);
    }

    describe('claim', () => {
      it('claims a free key: the caller owns a new in-progress record', async () => {
        const id = identity();
        const claim = request(id);
        const record = won(await store.claim(claim));
        expect(record).toMatchObject({
          ...id,
          status: 'in_progress',
          fingerprint: 'fp-original',
          ownerToken: claim.ownerToken,
          response: null,
          completedAt: null,
        });
        expect(record.lockedUntil!.getTime() - record.createdAt.getTime()).toBe(LEASE);
        expect(record.expiresAt.getTime() - record.createdAt.getTime()).toBe(HOUR);
        expect(await store.find(id)).toEqual(record);
      });

      it('treats scope, method, route and key together as the identity', async () => {
        const base = identity();
        const variants = [
          base,
          { ...base, scope: '' },
          { ...base, method: 'PUT' },
          { ...base, route: '/refunds' },
          { ...base, key: base.key.toUpperCase() },
        ];
        const tokens = [];
        for (const id of variants) tokens.push(won(await store.claim(request(id))).ownerToken);
        for (const [i, id] of variants.entries()) expect((await store.find(id))?.ownerToken).toBe(tokens[i]);
      });

      it('a second claim observes the live record, whatever its fingerprint, and does not take it', async () => {
        const id = identity();
        const first = request(id);
        won(await store.claim(first));
        for (const fingerprint of ['fp-original', 'fp-other']) {
          const observed = lost(await store.claim(request(id, { fingerprint })));
          expect(observed).toMatchObject({ expired: false, leaseLapsed: false });
          expect(observed.record).toMatchObject({
            ...id,
            status: 'in_progress',
            fingerprint: 'fp-original',
            ownerToken: first.ownerToken,
          });
        }
        expect((await store.find(id))?.ownerToken).toBe(first.ownerToken);
      });

      it('a claim of a completed key observes the record with its response', async () => {
        const { id } = await completed(HOUR);
        const observed = lost(await store.claim(request(id)));
        expect(observed).toMatchObject({ expired: false, leaseLapsed: false });
        expect(observed.record).toMatchObject({ status: 'completed', fingerprint: 'fp-original', ownerToken: null });
        expect(observed.record.response).toEqual(RESPONSE);
      });
    });

    describe('atomic claim', () => {
      async function race(id: RecordIdentity, fingerprints: string[]): Promise<IdempotencyRecord> {
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            store.claim(request(id, { fingerprint: fingerprints[i % fingerprints.length] })),
          ),
        );
        const winners = results.filter((result) => result.claimed).map(won);
        expect(winners).toHaveLength(1);
        // Every loser saw the winner's record, not some earlier state of the key.
        for (const result of results.filter((r) => !r.claimed)) {
          expect(lost(result).record.ownerToken).toBe(winners[0].ownerToken);
        }
        expect((await store.find(id))?.ownerToken).toBe(winners[0].ownerToken);
        return winners[0];
      }

      it('of 50 concurrent claims of a free key exactly one wins', async () => {
        await race(identity(), ['fp-a', 'fp-b']);
      });

      it('of 50 concurrent claims of an expired key exactly one re-claims it', async () => {
        const { id } = await completed(MINUTE);
        await harness.advance(2 * MINUTE);
        const winner = await race(id, ['fp-a', 'fp-b']);
        expect(winner).toMatchObject({ status: 'in_progress', response: null });
      });

      it('of 50 concurrent take-overs of a lapsed lease exactly one wins', async () => {
        const id = identity();
        const original = request(id);
        won(await store.claim(original));
        await harness.advance(LEASE + SECOND);
        const winner = await race(id, ['fp-original']);
        expect(winner.ownerToken).not.toBe(original.ownerToken);
      });

      it('of 50 concurrent take-overs of a lapsed lease, only the winner says it took over', async () => {
        const id = identity();
        won(await store.claim(request(id)));
        await harness.advance(LEASE + SECOND);
        const results = await Promise.all(Array.from({ length: 50 }, () => store.claim(request(id))));
        expect(results.filter(tookOver)).toHaveLength(1);
      });
    });

    describe('fencing', () => {
      it('complete, renew and release with a wrong token return false and change nothing', async () => {
        const id = identity();
        const claim = request(id);
        won(await store.claim(claim));
        await expectFencedOut(id, randomUUID());
        expect(await store.complete(id, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
      });

      it('once completed, not even the owner can complete, renew or release the record', async () => {
        const { id, claim } = await completed(HOUR);
        await expectFencedOut(id, claim.ownerToken);
        expect((await store.find(id))?.response).toEqual(RESPONSE);
      });

      it('renew extends the lease of the owner, so nobody takes over', async () => {
        const id = identity();
        const claim = request(id);
        won(await store.claim(claim));
        await harness.advance(20 * SECOND);
        expect(await store.renew(id, claim.ownerToken, LEASE)).toBe(true); // now lapses at 50 s
        await harness.advance(20 * SECOND); // 40 s: the first lease would have lapsed
        expect(lost(await store.claim(request(id)))).toMatchObject({ leaseLapsed: false });
        await harness.advance(20 * SECOND); // 60 s
        expect(won(await store.claim(request(id))).ownerToken).not.toBe(claim.ownerToken);
      });
    });

    describe('complete and release', () => {
      it('find returns the completed record with the response deep-equal to the stored one', async () => {
        const id = identity();
        const claim = request(id);
        won(await store.claim(claim));
        const response = structuredClone(RESPONSE) as { status: number };
        expect(await store.complete(id, claim.ownerToken, response as StoredResponse, 2 * HOUR)).toBe(true);
        response.status = 500; // the store keeps what it was given, not a live reference
        const record = await store.find(id);
        expect(record).toMatchObject({ ...id, status: 'completed', ownerToken: null, lockedUntil: null });
        expect(record!.response).toEqual(RESPONSE);
        expect(record!.expiresAt.getTime() - record!.completedAt!.getTime()).toBe(2 * HOUR);
      });

      it('release frees the key: find returns null and the next claim wins', async () => {
        const id = identity();
        const claim = request(id);
        won(await store.claim(claim));
        expect(await store.release(id, claim.ownerToken)).toBe(true);
        expect(await store.find(id)).toBeNull();
        const next = request(id, { fingerprint: 'fp-other' });
        expect(won(await store.claim(next))).toMatchObject({ fingerprint: 'fp-other', ownerToken: next.ownerToken });
        await expectFencedOut(id, claim.ownerToken);
      });
    });

    describe('expiry', () => {
      it('an expired completed record counts as absent: find is null and a claim wins, even with another fingerprint', async () => {
        const { id } = await completed(MINUTE);
        await harness.advance(MINUTE + SECOND);
        expect(await store.find(id)).toBeNull();
        const next = request(id, { fingerprint: 'fp-other' });
        expect(won(await store.claim(next))).toMatchObject({
          status: 'in_progress',
          fingerprint: 'fp-other',
          ownerToken: next.ownerToken,
          response: null,
          completedAt: null,
        });
      });

      it('an in-flight record past both its lease and its lifetime counts as absent', async () => {
        const id = identity();
        won(await store.claim(request(id, { ttlMs: MINUTE })));
        await harness.advance(MINUTE + SECOND);
        expect(await store.find(id)).toBeNull();
        expect(won(await store.claim(request(id, { fingerprint: 'fp-other' }))).fingerprint).toBe('fp-other');
      });

      // "A record whose expiresAt has passed behaves as absent for every operation": an
      // owner that stalled past lease and lifetime must not bring its record back.
      const formerOwnerWrites: Array<[string, (id: RecordIdentity, token: string) => Promise<boolean>]> = [
        ['complete', (id, token) => store.complete(id, token, RESPONSE, HOUR)],
        ['renew', (id, token) => store.renew(id, token, HOUR)],
      ];
      for (const [what, write] of formerOwnerWrites) {
        it(`an expired record is absent to its former owner too: ${what} returns false and changes nothing`, async () => {
          const id = identity();
          const claim = request(id, { ttlMs: MINUTE });
          won(await store.claim(claim));
          await harness.advance(MINUTE + SECOND);
          expect(await write(id, claim.ownerToken)).toBe(false);
          expect(await store.find(id)).toBeNull();
        });
      }

      it('a live lease keeps an in-flight record alive past its expiry', async () => {
        const id = identity();
        const claim = request(id, { ttlMs: MINUTE });
        won(await store.claim(claim));
        await harness.advance(20 * SECOND);
        expect(await store.renew(id, claim.ownerToken, MINUTE)).toBe(true);
        await harness.advance(45 * SECOND); // expiry passed at 60 s, the lease holds until 80 s
        expect((await store.find(id))?.ownerToken).toBe(claim.ownerToken);
        expect(lost(await store.claim(request(id, { fingerprint: 'fp-other' })))).toMatchObject({ expired: false });
        expect(await store.purgeExpired()).toBe(0);
        expect(await store.complete(id, claim.ownerToken, RESPONSE, HOUR)).toBe(true);
      });
    });

    describe('take-over of a lapsed lease', () => {
      // What an application reports as a crashed or stalled owner (the lease-taken-over event).
      it('the claim that takes over says so (takenOver); a new claim, a re-claim after release or after expiry does not', async () => {
        const id = identity();
        const first = request(id);
        const fresh = await store.claim(first);
        won(fresh);
        expect(tookOver(fresh)).toBe(false);
        expect(await store.release(id, first.ownerToken)).toBe(true);
        const again = request(id);
        const reclaimed = await store.claim(again);
        won(reclaimed);
        expect(tookOver(reclaimed)).toBe(false);
        await harness.advance(LEASE + SECOND); // its owner stalled: the lease lapsed
        const successor = request(id);
        const takeOver = await store.claim(successor);
        expect(tookOver(takeOver)).toBe(true);
        expect(won(takeOver).ownerToken).toBe(successor.ownerToken);
        expect(await store.complete(id, successor.ownerToken, RESPONSE, MINUTE)).toBe(true);
        await harness.advance(MINUTE + SECOND);
        const afterExpiry = await store.claim(request(id));
        won(afterExpiry);
        expect(tookOver(afterExpiry)).toBe(false);
      });

      it('an in-flight record past both its lease and its lifetime is re-claimed, not taken over', async () => {
        const id = identity();
        won(await store.claim(request(id, { ttlMs: MINUTE })));
        await harness.advance(MINUTE + SECOND);
        const result = await store.claim(request(id));
        won(result);
        expect(tookOver(result)).toBe(false);
      });

      it('with the same fingerprint: a new token takes over and the old one is fenced out', async () => {
        const id = identity();
        const original = request(id);
        won(await store.claim(original));
        await harness.advance(LEASE + SECOND);
        const successor = request(id);
        const record = won(await store.claim(successor));
        expect(record).toMatchObject({
          status: 'in_progress',
          fingerprint: 'fp-original',
          ownerToken: successor.ownerToken,
        });
        // The new lease is live: a third request does not take over again.
        expect(lost(await store.claim(request(id)))).toMatchObject({ leaseLapsed: false });
        await expectFencedOut(id, original.ownerToken);
        expect(await store.renew(id, successor.ownerToken, LEASE)).toBe(true);
        expect(await store.complete(id, successor.ownerToken, RESPONSE, HOUR)).toBe(true);
        expect((await store.find(id))?.response).toEqual(RESPONSE);
      });

      // After a secret rotation, the same request arrives with a new fingerprint and the old one as accepted.
      it('with the fingerprint under a previous secret: takes over, keeping the stored fingerprint', async () => {
        const id = identity();
        won(await store.claim(request(id)));
        await harness.advance(LEASE + SECOND);
        const successor = request(id, { fingerprint: 'fp-rotated', acceptedFingerprints: ['fp-original'] });
        const record = won(await store.claim(successor));
        expect(record).toMatchObject({ ownerToken: successor.ownerToken, fingerprint: 'fp-original' });
        expect(lost(await store.claim(request(id, { fingerprint: 'fp-rotated' })))).toMatchObject({
          leaseLapsed: false,
        });
      });

      it('with a different fingerprint: no take-over, the lapsed record is observed', async () => {
        const id = identity();
        const original = request(id);
        won(await store.claim(original));
        await harness.advance(LEASE + SECOND);
        const observed = lost(await store.claim(request(id, { fingerprint: 'fp-other' })));
        expect(observed).toMatchObject({ expired: false, leaseLapsed: true });
        expect(observed.record).toMatchObject({ fingerprint: 'fp-original', ownerToken: original.ownerToken });
        expect((await store.find(id))?.ownerToken).toBe(original.ownerToken);
      });
    });

    describe('sharedSecret', () => {
      it('is at least 32 random bytes and the same on every call', async () => {
        const secret = await store.sharedSecret();
        expect(secret.length).toBeGreaterThanOrEqual(32);
        expect(new Set(secret).size).toBeGreaterThan(8);
        expect((await store.sharedSecret()).equals(secret)).toBe(true);
      });
    });

    describe('purgeExpired', () => {
      it('deletes expired records and keeps live ones and in-flight ones under a live lease', async () => {
        const expired = [await completed(MINUTE), await completed(MINUTE), await completed(MINUTE)];
        const abandoned = identity();
        won(await store.claim(request(abandoned, { ttlMs: MINUTE })));
        const live = await completed(HOUR);
        const lapsedButLive = identity();
        won(await store.claim(request(lapsedButLive)));
        const longRunning = request(identity(), { ttlMs: MINUTE });
        won(await store.claim(longRunning));
        await harness.advance(20 * SECOND);
        expect(await store.renew(longRunning.identity, longRunning.ownerToken, 5 * MINUTE)).toBe(true);
        await harness.advance(100 * SECOND); // 2 min: past every one-minute lifetime, inside the renewed lease

        for (const { id } of expired) expect(await store.find(id)).toBeNull();
        expect(await store.purgeExpired()).toBe(harness.expiresNatively ? 0 : expired.length + 1);
        expect(await store.purgeExpired()).toBe(0);
        expect((await store.find(live.id))?.response).toEqual(RESPONSE);
        expect((await store.find(lapsedButLive))?.status).toBe('in_progress');
        expect((await store.find(longRunning.identity))?.ownerToken).toBe(longRunning.ownerToken);
      });

      it('deletes at most batchSize × maxBatches records per call', async () => {
        for (let i = 0; i < 8; i++) await completed(MINUTE);
        const live = await completed(HOUR);
        await harness.advance(2 * MINUTE);

        const purged = (count: number) => (harness.expiresNatively ? 0 : count);
        expect(await store.purgeExpired({ batchSize: 2, maxBatches: 2 })).toBe(purged(4));
        expect(await store.purgeExpired({ batchSize: 2, maxBatches: 1 })).toBe(purged(2));
        expect(await store.purgeExpired({ batchSize: 1 })).toBe(purged(2)); // unbounded batches
        expect(await store.purgeExpired({ batchSize: 2 })).toBe(0);
        expect(await store.find(live.id)).not.toBeNull();
      });
    });

    describe('operator actions', () => {
      /** Optional for a store: one without them must reject both calls (the base class does). */
      async function unsupported(): Promise<boolean> {
        if (store.releaseRecord !== IdempotencyStore.prototype.releaseRecord) return false;
        const rejects = (call: Promise<unknown>) =>
          call.then(
            () => false,
            () => true,
          );
        expect(await rejects(store.releaseRecord(identity()))).toBe(true);
        expect(await rejects(store.deleteRecord(identity()))).toBe(true);
        return true;
      }

      it('releaseRecord frees an in-progress key whatever its owner, whose token is then fenced out', async () => {
        if (await unsupported()) return;
        const claim = request(identity());
        won(await store.claim(claim));
        expect(await store.releaseRecord(claim.identity)).toBe(true);
        expect(await store.find(claim.identity)).toBeNull();
        expect(await store.complete(claim.identity, claim.ownerToken, RESPONSE, HOUR)).toBe(false);
        won(await store.claim(request(claim.identity, { fingerprint: 'fp-other' })));
      });

      it('releaseRecord leaves completed, absent and expired records alone', async () => {
        if (await unsupported()) return;
        const { id } = await completed(HOUR);
        expect(await store.releaseRecord(id)).toBe(false);
        expect((await store.find(id))?.response).toEqual(RESPONSE);
        expect(await store.releaseRecord(identity())).toBe(false);
        const abandoned = identity();
        won(await store.claim(request(abandoned, { ttlMs: MINUTE })));
        await harness.advance(2 * MINUTE);
        expect(await store.releaseRecord(abandoned)).toBe(false);
      });

      it('deleteRecord removes a live record in either state and says which; null when there is none', async () => {
        if (await unsupported()) return;
        const { id } = await completed(HOUR);
        expect(await store.deleteRecord(id)).toBe('completed');
        expect(await store.find(id)).toBeNull();
        won(await store.claim(request(id, { fingerprint: 'fp-other' })));
        expect(await store.deleteRecord(id)).toBe('in_progress');
        expect(await store.deleteRecord(id)).toBeNull();
        const old = await completed(MINUTE);
        await harness.advance(2 * MINUTE);
        expect(await store.deleteRecord(old.id)).toBeNull();
      });
    });
  });
}
