/**
 * Group commit for one kind of statement (lease-mode claims, completions, look-ups). An
 * operation that arrives while an earlier one of its kind is in flight waits for it, and
 * then goes to PostgreSQL together with every other that arrived meanwhile, as one
 * statement: one round trip (and one commit) for all of them, each still getting its own
 * outcome. Alone,
 * an operation goes at once, as its own statement, so that a quiet service pays no latency
 * for it; under load, an operation waits for at most the statement in flight.
 *
 * Where operations for one identity must not share a statement, `identity` keeps them
 * apart: a later one waits for the next statement, and sees what the earlier one did.
 * If a shared statement fails, each of its operations runs again on its own: one
 * operation's bad value, or a deadlock, must not become the others' error. The statement
 * is atomic, so either nothing of it happened, or (its reply lost after the commit) all of
 * it did: each operation alone must then read what it finds as its own doing where it is
 * (a claim recognises its owner token).
 */
export class GroupedStatements<Item, Result> {
  private pending: Array<Waiting<Item, Result>> = [];
  /** Statements in flight that have not yet run past `stalledAfterMs`. */
  private inFlight = 0;

  constructor(
    private readonly options: {
      /** The operation alone, as its own statement. */
      one: (item: Item) => Promise<Result>;
      /** Several operations as one statement, results in their order. */
      many: (items: Item[]) => Promise<Result[]>;
      /** Identity of an operation, if two with the same must never share a statement. */
      identity?: (item: Item) => string;
      /** Statements of this kind in flight at once. */
      maxInFlight: number;
      /**
       * A statement in flight for longer than this no longer holds its place, and the next
       * group goes without waiting for it: a connection gone silent (a query on it may not
       * return for minutes) or a long lock wait must not hold up every operation of the
       * process, and their deadlines with them.
       */
      stalledAfterMs: number;
      /** Operations per statement at most. */
      maxSize: number;
    },
  ) {}

  run(item: Item): Promise<Result> {
    return new Promise<Result>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.options.maxInFlight && this.pending.length > 0) {
      const group = this.take();
      this.inFlight++;
      let counted = true;
      const uncount = () => {
        if (!counted) return;
        counted = false;
        this.inFlight--;
        this.flush();
      };
      const stalled = setTimeout(uncount, this.options.stalledAfterMs);
      stalled.unref();
      void this.send(group).finally(() => {
        clearTimeout(stalled);
        uncount();
      });
    }
  }

  /** The oldest pending operations (at most one per identity, if kept apart); the others keep their place. */
  private take(): Array<Waiting<Item, Result>> {
    const group: Array<Waiting<Item, Result>> = [];
    const rest: Array<Waiting<Item, Result>> = [];
    const identities = new Set<string>();
    for (const waiting of this.pending) {
      const identity = this.options.identity?.(waiting.item);
      if (group.length < this.options.maxSize && (identity === undefined || !identities.has(identity))) {
        if (identity !== undefined) identities.add(identity);
        group.push(waiting);
      } else {
        rest.push(waiting);
      }
    }
    this.pending = rest;
    return group;
  }

  private async send(group: Array<Waiting<Item, Result>>): Promise<void> {
    if (group.length > 1) {
      let results: Result[] | undefined;
      try {
        results = await this.options.many(group.map((waiting) => waiting.item));
      } catch {
        // Nothing of the statement happened: each operation runs again alone, below.
      }
      if (results) {
        group.forEach((waiting, i) => waiting.resolve(results[i]));
        return;
      }
    }
    await Promise.all(group.map((waiting) => this.options.one(waiting.item).then(waiting.resolve, waiting.reject)));
  }
}

interface Waiting<Item, Result> {
  item: Item;
  resolve: (result: Result) => void;
  reject: (error: unknown) => void;
}
