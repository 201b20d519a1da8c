import { RequestInProgressError } from '../errors.js';

/**
 * Per-process queue of the requests for one key: only its head talks to the store. In
 * `'wait'` mode this keeps parallel duplicates from each holding a database connection
 * while they wait (a burst of 200 on a pool of 10 would otherwise starve the pool, and
 * the owner's own queries with it); across processes, the database's locks take over.
 */
export class KeyQueue {
  private readonly tails = new Map<string, Promise<void>>();

  /** Whether a request for `key` is in the queue (running or waiting). */
  busy(key: string): boolean {
    return this.tails.has(key);
  }

  /**
   * Waits until every earlier request for `key` has left, or throws 409 at `deadline`.
   * Returns the function that lets the next one in (call it exactly once), and whether
   * another request was ahead.
   */
  async enter(
    key: string,
    deadline: number,
    retryAfterSeconds: number,
  ): Promise<{ leave: () => void; waited: boolean }> {
    const ahead = this.tails.get(key);
    let leave!: () => void;
    const mine = new Promise<void>((resolve) => (leave = resolve));
    // The next request waits for everyone ahead of this one too, even if this one gives up.
    const tail = ahead ? ahead.then(() => mine) : mine;
    this.tails.set(key, tail);
    let left = false;
    const release = () => {
      if (left) return;
      left = true;
      leave();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
    if (ahead && !(await settlesBefore(ahead, deadline))) {
      release();
      throw new RequestInProgressError(retryAfterSeconds);
    }
    return { leave: release, waited: ahead !== undefined };
  }
}

function settlesBefore(promise: Promise<void>, deadline: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
    void promise.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}
