/**
 * A clock that only the test moves, for an in-process store that takes its time from a
 * function (as `MemoryIdempotencyStore` does): pass `clock.now` to the store and
 * `clock.advance` as the harness's `advance`.
 */
export class ManualClock {
  private time: number;

  constructor(start = Date.UTC(2025, 0, 1)) {
    this.time = start;
  }

  readonly now = (): number => this.time;

  advance(ms: number): void {
    this.time += ms;
  }
}
