import type { Cluster, Redis } from 'ioredis';

/**
 * Notifications of record changes, for waiting duplicates: one subscriber connection per
 * store (a duplicate of its client, opened on first use), subscribed to a record's channel
 * for as long as at least one local caller waits on it. A cluster delivers plain pub/sub
 * messages to every node, so the subscriber may sit on any of them.
 */
export class ChangeListener {
  private subscriber?: Redis | Cluster;
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly subscriptions = new Map<string, Promise<unknown>>();
  private closed = false;

  constructor(private readonly client: Redis | Cluster) {}

  /**
   * Resolves when a message arrives on `channel`, after `ms`, or at once when
   * `changedAlready` (called once the subscription holds) says the change has happened.
   * Never throws: if Redis cannot be reached, it waits `ms`, and the caller's next read
   * reports the outage.
   */
  async waitFor(channel: string, ms: number, changedAlready: () => Promise<boolean>): Promise<void> {
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    const timer = setTimeout(wake, ms);
    let waiters = this.waiters.get(channel);
    if (!waiters) this.waiters.set(channel, (waiters = new Set()));
    waiters.add(wake);
    try {
      try {
        await this.subscribe(channel);
        if (await changedAlready()) return;
      } catch {
        // Unreachable: the timer still ends the wait.
      }
      await woken;
    } finally {
      clearTimeout(timer);
      waiters.delete(wake);
      if (waiters.size === 0) {
        this.waiters.delete(channel);
        this.unsubscribe(channel);
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  private subscribe(channel: string): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('the store is shut down'));
    let subscription = this.subscriptions.get(channel);
    if (!subscription) {
      subscription = this.connection()
        .subscribe(channel)
        .catch((error: unknown) => {
          this.subscriptions.delete(channel);
          throw error;
        });
      this.subscriptions.set(channel, subscription);
    }
    return subscription;
  }

  private unsubscribe(channel: string): void {
    if (!this.subscriptions.delete(channel) || !this.subscriber) return;
    // Commands run in order on the connection: a later subscribe to the channel wins.
    this.subscriber.unsubscribe(channel).catch(() => undefined);
  }

  private connection(): Redis | Cluster {
    if (!this.subscriber) {
      const subscriber = this.client.duplicate();
      // Reconnection is ioredis' business; a waiter without messages falls back to its timer.
      subscriber.on('error', () => undefined);
      subscriber.on('message', (channel: string) => {
        for (const wake of this.waiters.get(channel) ?? []) wake();
      });
      this.subscriber = subscriber;
    }
    return this.subscriber;
  }
}
