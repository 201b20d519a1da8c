import { Logger, type OnApplicationShutdown } from '@nestjs/common';
import { createHash, randomBytes } from 'node:crypto';
import type { Cluster, Redis, RedisOptions } from 'ioredis';
import type { IdempotencyRecord, ObservedRecord, RecordIdentity, RecordStatus } from '../core/record.js';
import {
  type ClaimRequest,
  type ClaimResult,
  IdempotencyStore,
  type PurgeOptions,
  purgeLimits,
  type ResponsePayload,
} from './idempotency.store.js';
import { ChangeListener } from './redis/change-listener.js';
import { CLAIM, COMPLETE, RELEASE, RENEW, type RedisScript, SHARED_SECRET } from './redis/scripts.js';

/** An `ioredis` client: a `Redis` (one server, or a primary behind Sentinel) or a `Cluster`. */
export type RedisClient = Redis | Cluster;

export interface RedisStoreOptions {
  /**
   * Where the records live: an `ioredis` `Redis` or `Cluster` instance (the application
   * keeps it, and closes it itself), or `ioredis` options or a `redis://` URL for one
   * server (the store opens that connection and closes it at shutdown).
   */
  connection: RedisClient | RedisOptions | string;
  /**
   * Prefix of every key and pub/sub channel the store uses. Without braces: each record's
   * key carries its own hash tag.
   * @default 'idempotency:'
   */
  keyPrefix?: string;
  /**
   * Longest a waiting duplicate (`concurrency: 'wait'`) sleeps when no notification
   * arrives, before it reads the record again: it bounds how late a waiter notices a lease
   * that lapsed (its owner died), which sends no notification.
   * @default 1000
   */
  fallbackPollMs?: number;
  /**
   * What transactional routes (and transactional `run()` and `@IdempotentMethod()`) do:
   * - `'refuse'`: the application does not start while it has one.
   * - `'postgres'`: their records stay in PostgreSQL (`idempotency_keys` on the TypeORM
   *   DataSource, as with the default store), where their writes commit with them; every
   *   other record is in Redis. Needs TypeORM, the migrations, and the `dataSource` option
   *   when the DataSource has a name.
   * @default 'refuse'
   */
  transactionalRoutes?: 'refuse' | 'postgres';
}

const DEFAULT_PREFIX = 'idempotency:';

/**
 * The Redis store: one hash per record, with the key's native expiry, changed only by Lua
 * scripts (one atomic round trip each; see `redis/scripts.ts`). It needs neither TypeORM
 * nor PostgreSQL, and runs on one server or a Redis Cluster. `ioredis` (an optional peer
 * dependency) is loaded only when a store is created from options or a URL.
 *
 * What it cannot give: transactional mode (the handler's writes are not in Redis), and
 * PostgreSQL's durability. What a Redis restart or failover loses depends on the
 * server's persistence (see the README, "Redis store").
 */
export class RedisIdempotencyStore extends IdempotencyStore implements OnApplicationShutdown {
  private readonly prefix: string;
  private readonly fallbackPollMs: number;
  private readonly changes: ChangeListener;
  private readonly logger = new Logger('IdempotencyModule');
  /** Whether the client has been connected: afterwards, claims need it connected. */
  private wasReady: boolean;
  /** The fingerprint secret as read, once read (base64). */
  private secret?: string;

  /**
   * A store on an open client. `owned`: whether the store closes the client at shutdown
   * (true when it opened it, from options or a URL).
   */
  constructor(
    readonly client: RedisClient,
    options: Omit<RedisStoreOptions, 'connection' | 'transactionalRoutes'> = {},
    private readonly owned = false,
  ) {
    super();
    this.prefix = options.keyPrefix ?? DEFAULT_PREFIX;
    if (/[{}]/.test(this.prefix)) {
      throw new Error(`RedisIdempotencyStore: keyPrefix "${this.prefix}" must not contain braces.`);
    }
    this.fallbackPollMs = options.fallbackPollMs ?? 1000;
    if (!(this.fallbackPollMs > 0)) throw new RangeError('RedisIdempotencyStore: fallbackPollMs must be positive');
    this.changes = new ChangeListener(client);
    this.wasReady = client.status === 'ready';
    client.on('ready', this.onReady);
    if (owned) {
      // The store's own connection: one warning per outage (ioredis reconnects by itself),
      // instead of ioredis' "Unhandled error event" on every attempt.
      let reported = false;
      client.on('ready', () => (reported = false));
      client.on('error', (error: Error) => {
        if (reported) return;
        reported = true;
        this.logger.warn(`Redis connection error: ${error.message}; reconnecting`);
      });
    }
  }

  /** A store from module options: the given client, or a connection it opens (loading `ioredis` then). */
  static async create(options: RedisStoreOptions): Promise<RedisIdempotencyStore> {
    const { connection, keyPrefix, fallbackPollMs } = options;
    const rest = { keyPrefix, fallbackPollMs };
    if (isClient(connection)) return new RedisIdempotencyStore(connection, rest);
    let RedisClass: typeof Redis;
    try {
      ({ Redis: RedisClass } = await import('ioredis'));
    } catch (error) {
      throw new Error(
        'IdempotencyModule: the Redis store needs the "ioredis" package (version 5 or 6): npm install ioredis',
        { cause: error },
      );
    }
    const client = typeof connection === 'string' ? new RedisClass(connection) : new RedisClass(connection);
    return new RedisIdempotencyStore(client, rest, true);
  }

  async claim(request: ClaimRequest): Promise<ClaimResult> {
    // Once the connection has dropped, ioredis would queue the claim and send it on
    // reconnection, after the request has answered 503: the key would then be held by
    // nobody until its lease lapses. So a claim is only sent over a connection that is up
    // (before the first connection, commands wait for it as usual).
    if (this.wasReady && this.client.status !== 'ready') {
      throw new Error(`Redis is not connected (${this.client.status})`);
    }
    const { identity, ownerToken, leaseMs, ttlMs } = request;
    const reply = (await this.runWithin(
      request.deadline,
      CLAIM,
      this.keyOf(identity),
      request.fingerprint,
      ownerToken,
      String(leaseMs),
      String(ttlMs),
      identityJson(identity),
      ...(request.acceptedFingerprints ?? []),
    )) as [number, number, ...(string | number | null)[]];
    const now = Number(reply[1]);
    if (reply[0] === 1) {
      const record: IdempotencyRecord = {
        ...identity,
        status: 'in_progress',
        fingerprint: String(reply[2]),
        ownerToken,
        lockedUntil: new Date(now + leaseMs),
        response: null,
        createdAt: new Date(now),
        completedAt: null,
        expiresAt: new Date(now + ttlMs),
      };
      return reply[3] === 1 ? { claimed: true, record, takenOver: true } : { claimed: true, record };
    }
    const [, , lapsed, s, f, o, l, c, d, e, r] = reply as (string | null)[];
    const record = toRecord(identity, { s, f, o, l, c, d, e, r });
    const observed: ObservedRecord = { record, expired: false, leaseLapsed: Number(lapsed) === 1 };
    return { claimed: false, observed };
  }

  async complete(
    identity: RecordIdentity,
    ownerToken: string,
    response: ResponsePayload,
    ttlMs: number,
  ): Promise<boolean> {
    const reply = await this.run(
      COMPLETE,
      this.keyOf(identity),
      ownerToken,
      JSON.stringify(response),
      String(ttlMs),
      this.channelOf(identity),
    );
    return reply === 1;
  }

  async release(identity: RecordIdentity, ownerToken: string): Promise<boolean> {
    return (await this.run(RELEASE, this.keyOf(identity), ownerToken, this.channelOf(identity))) === 1;
  }

  async renew(identity: RecordIdentity, ownerToken: string, leaseMs: number): Promise<boolean> {
    return (await this.run(RENEW, this.keyOf(identity), ownerToken, String(leaseMs))) === 1;
  }

  /** One read (HGETALL): the key's expiry removes records that no longer count, so whatever is there is live. */
  async find(identity: RecordIdentity, deadline?: number): Promise<IdempotencyRecord | null> {
    const fields = await within(this.client.hgetall(this.keyOf(identity)), deadline);
    if (!fields.s) return null;
    return toRecord(identity, fields);
  }

  /**
   * Wakes a waiting duplicate as soon as the record completes or is released (pub/sub on
   * the record's channel), or after `fallbackPollMs` at most, for a lease that lapses.
   * After subscribing it reads the record once, so that a change between the caller's
   * claim and the subscription is not missed.
   */
  override async waitForChange(identity: RecordIdentity, _pollMs: number, deadline: number): Promise<void> {
    const ms = Math.min(this.fallbackPollMs, deadline - Date.now());
    if (ms <= 0) return;
    const key = this.keyOf(identity);
    await this.changes.waitFor(this.channelOf(identity), ms, async () => {
      const status = await this.client.hget(key, 's');
      return status !== 'in_progress';
    });
  }

  /**
   * Kept under `<prefix>fingerprint-secret`, created once by the first instance (SET NX).
   * A Redis that lost its data (a restart without persistence, a failover to a replica
   * that had not received it) would let the next instance create another secret, and
   * retries of the same request would then look like other payloads (422) across
   * instances: so every store that read the secret writes it back (SET NX) whenever its
   * connection is ready again. Giving `fingerprintSecret` in the module options avoids
   * the question altogether.
   */
  async sharedSecret(): Promise<Buffer> {
    const value = await this.run(SHARED_SECRET, this.secretKey(), randomBytes(32).toString('base64'));
    this.secret = String(value);
    return Buffer.from(this.secret, 'base64');
  }

  private readonly onReady = (): void => {
    this.wasReady = true;
    if (this.secret) this.run(SHARED_SECRET, this.secretKey(), this.secret).catch(() => undefined);
  };

  private secretKey(): string {
    return `${this.prefix}fingerprint-secret`;
  }

  /** Redis removes expired records itself (each key's own expiry): there is never anything to purge. */
  async purgeExpired(options: PurgeOptions = {}): Promise<number> {
    purgeLimits(options);
    return await Promise.resolve(0);
  }

  /**
   * Checks that Redis answers and runs scripts, and warns when the server may evict keys
   * before they expire (a `maxmemory-policy` other than `noeviction`): an evicted
   * in-flight record lets a duplicate run, an evicted result lets a retry run again.
   */
  override async verify(): Promise<void> {
    await this.run(SHARED_SECRET, `${this.prefix}verify`, 'ok');
    await this.client.del(`${this.prefix}verify`);
    let policy: string | undefined;
    try {
      const reply = (await this.client.call('CONFIG', 'GET', 'maxmemory-policy')) as string[];
      policy = reply[1];
    } catch {
      // CONFIG is often disabled on managed Redis: nothing to check then.
    }
    if (policy && policy !== 'noeviction') {
      this.logger.warn(
        `Redis maxmemory-policy is "${policy}": under memory pressure Redis may evict idempotency records ` +
          'before they expire, and a retry then runs again. Use "noeviction" for the Redis that holds them.',
      );
    }
  }

  async onApplicationShutdown(): Promise<void> {
    this.client.off('ready', this.onReady);
    await this.changes.close();
    if (this.owned) await this.client.quit().catch(() => this.client.disconnect());
  }

  /** `<prefix>{<hash of the identity>}`: the hash tag puts everything about one record in one slot. */
  keyOf(identity: RecordIdentity): string {
    return `${this.prefix}{${tagOf(identity)}}`;
  }

  /** Where completions and releases of the record are published. */
  channelOf(identity: RecordIdentity): string {
    return `${this.prefix}changed:{${tagOf(identity)}}`;
  }

  /**
   * `run()`, given up at `deadline`: when the connection drops while a command waits,
   * ioredis retries it, and the request answers 503 at its deadline rather than after the
   * client's retries. A claim that still reaches Redis later (sent before the drop, resent
   * after it) holds its key until its lease lapses, as one of a process that died.
   */
  private runWithin(
    deadline: number | undefined,
    script: RedisScript,
    key: string,
    ...args: string[]
  ): Promise<unknown> {
    return within(this.run(script, key, ...args), deadline);
  }

  /** EVALSHA, and EVAL when the server does not have the script yet (after a restart, on a new node). */
  private async run(script: RedisScript, key: string, ...args: string[]): Promise<unknown> {
    try {
      return await this.client.evalsha(script.sha, 1, key, ...args);
    } catch (error) {
      if (!String((error as Error)?.message).startsWith('NOSCRIPT')) throw error;
      return this.client.eval(script.lua, 1, key, ...args);
    }
  }
}

/** `promise`, or a rejection once `deadline` (epoch ms) has passed. */
function within<T>(promise: Promise<T>, deadline: number | undefined): Promise<T> {
  if (deadline === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error('Redis did not answer before the deadline')),
      Math.max(0, deadline - Date.now()),
    );
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: Error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

function isClient(connection: RedisStoreOptions['connection']): connection is RedisClient {
  return typeof connection === 'object' && typeof (connection as RedisClient).evalsha === 'function';
}

function identityJson({ scope, method, route, key }: RecordIdentity): string {
  return JSON.stringify([scope, method, route, key]);
}

function tagOf(identity: RecordIdentity): string {
  return createHash('sha256').update(identityJson(identity)).digest('base64url');
}

type Fields = Record<'s' | 'f' | 'o' | 'l' | 'c' | 'd' | 'e' | 'r', string | null | undefined>;

function toRecord(identity: RecordIdentity, { s, f, o, l, c, d, e, r }: Partial<Fields>): IdempotencyRecord {
  const date = (value: string | null | undefined) => (value ? new Date(Number(value)) : null);
  return {
    ...identity,
    status: s as RecordStatus,
    fingerprint: f!,
    ownerToken: o || null,
    lockedUntil: date(l),
    response: r ? (JSON.parse(r) as ResponsePayload) : null,
    createdAt: date(c)!,
    completedAt: date(d),
    expiresAt: date(e)!,
  };
}
