/**
 * The idempotency record and its state machine.
 *
 * ```
 *            claim                      complete (owner token)
 *  (absent) ───────▶ in_progress ───────────────────────────▶ completed
 *     ▲                 │   ▲                                     │
 *     │ release         │   │ take over (lease lapsed,            │ expires_at passed:
 *     │ (owner token)   │   │ same fingerprint; new token)        │ counts as absent,
 *     └─────────────────┘   └─────────                            │ purged or re-claimed
 *     ▲                                                           │
 *     └───────────────────────────────────────────────────────────┘
 * ```
 *
 * - `in_progress`: a request owns the key. It holds a random owner token (the fencing
 *   token) and a lease (`lockedUntil`) that it renews while it runs. Only the holder of
 *   the token may complete or release the record.
 * - `completed`: the response is stored and replayed until `expiresAt`. A completed
 *   record never changes until it expires.
 * - Released records are deleted: the key is free again, exactly as if never used.
 *
 * The same rules are enforced by the database (CHECK constraints and a transition
 * trigger, see the migration), so a bug in a store cannot produce another transition.
 */

export type RecordStatus = 'in_progress' | 'completed';

/** What makes a record unique: the caller's scope, the route and the client's key. */
export interface RecordIdentity {
  /** The caller's identity (from the scope resolver); '' for anonymous callers. */
  readonly scope: string;
  /** HTTP method of the request. */
  readonly method: string;
  /** Route pattern of the handler, e.g. `/payments/:id`. */
  readonly route: string;
  /** The client's idempotency key, unquoted. */
  readonly key: string;
}

/** How a stored body is turned back into what the handler returned. */
export type StoredBodyKind =
  /** JSON text of a value (object, array, number, boolean, null) the handler returned. */
  | 'json'
  /** A string the handler returned, sent as is. */
  | 'text'
  /** A Buffer or Uint8Array the handler returned. */
  | 'binary'
  /** A StreamableFile, read to its end. */
  | 'file'
  /** The handler returned undefined. */
  | 'empty'
  /** A thrown HttpException: `body` is the JSON text of its `getResponse()`. */
  | 'error'
  /** The response could not be stored faithfully; replays answer 410. */
  | 'unreplayable';

/** A response as stored in the record's JSONB column. */
export interface StoredResponse {
  readonly status: number;
  /** Allow-listed response headers, lower-case names. */
  readonly headers: Readonly<Record<string, string | string[]>>;
  readonly kind: StoredBodyKind;
  /**
   * The body, exactly as produced: JSON text is kept as a string (not as a JSONB
   * object, which would reorder keys and drop spacing), so replays are byte-identical.
   */
  readonly body?: string;
  /** For `binary`: the handler returned a Uint8Array that is not a Buffer. */
  readonly uint8array?: boolean;
  /** For `json`: the handler returned an object whose JSON form is a primitive (e.g. a Date). */
  readonly boxed?: boolean;
  /** `base64` for bytes, and for text that JSONB cannot hold (NUL, lone surrogates). */
  readonly encoding?: 'utf8' | 'base64';
  /** For `file`: the StreamableFile's type, disposition and length. */
  readonly file?: { type?: string; disposition?: string | string[]; length?: number };
  /** For `unreplayable`: why the response was not stored. */
  readonly reason?: string;
}

/** A stored response encrypted at rest (the `encryptionKeys` option): AES-256-GCM under the key `kid`. */
export interface SealedResponse {
  readonly sealed: 'A256GCM';
  readonly kid: string;
  readonly iv: string;
  readonly tag: string;
  readonly data: string;
}

export interface IdempotencyRecord extends RecordIdentity {
  readonly status: RecordStatus;
  /** `<secret id>:<HMAC-SHA-256 of the canonical request>` (see `Fingerprinter`). */
  readonly fingerprint: string;
  /** Only while `in_progress`. */
  readonly ownerToken: string | null;
  /** Only while `in_progress`: after this instant another request may take over. */
  readonly lockedUntil: Date | null;
  /** Only once `completed`; sealed when responses are encrypted at rest. */
  readonly response: StoredResponse | SealedResponse | null;
  readonly createdAt: Date;
  readonly completedAt: Date | null;
  readonly expiresAt: Date;
}

/**
 * A record as a store saw it at the time of a claim, with the time comparisons made
 * by the store's own clock (the database's, so app instances need no synchronised clocks).
 */
export interface ObservedRecord {
  readonly record: IdempotencyRecord;
  /** `expiresAt` has passed: the record counts as absent. */
  readonly expired: boolean;
  /** `in_progress` and its lease has lapsed: its owner is presumed dead. */
  readonly leaseLapsed: boolean;
}

/** What a new request with a given fingerprint may do with an existing record. */
export type ClaimDecision =
  /** The key is free (expired record): claim it afresh. */
  | 'reclaim'
  /** An abandoned in-flight record with the same payload: take it over with a new token. */
  | 'take-over'
  /** A completed record for the same payload: answer with its stored response. */
  | 'replay'
  /** Another request holds a live lease on the same payload. */
  | 'in-progress'
  /** The key belongs to a different payload (IETF draft: 422). */
  | 'mismatch';

/**
 * The state machine's single decision point: every store applies it to the row it
 * examined (under a row lock, for PostgreSQL) before changing anything.
 */
export function decideClaim(
  observed: ObservedRecord,
  fingerprint: string,
  /** The same request's fingerprints under previous secrets (after a rotation). */
  alsoAccepted: readonly string[] = [],
): ClaimDecision {
  if (observed.expired) return 'reclaim';
  const stored = observed.record.fingerprint;
  if (stored !== fingerprint && !alsoAccepted.includes(stored)) return 'mismatch';
  if (observed.record.status === 'completed') return 'replay';
  return observed.leaseLapsed ? 'take-over' : 'in-progress';
}
