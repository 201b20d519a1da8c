import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { RecordIdentity, SealedResponse, StoredResponse } from './record.js';

/** An encryption key for stored responses: 32 bytes, given as a Buffer or as base64 text. */
export interface ResponseEncryptionKey {
  /** Stored with each record, so that records written under an older key can still be read. */
  readonly id: string;
  readonly key: string | Buffer;
}

/**
 * Encrypts stored responses with the first key and decrypts them with whichever key
 * their id names. The record's identity is the additional authenticated data: a sealed
 * response copied into another record fails to open instead of being replayed there.
 * Without keys, responses are stored as they are.
 */
export class ResponseCipher {
  private readonly keys: Map<string, Buffer>;
  private readonly current?: string;

  constructor(keys: readonly ResponseEncryptionKey[] = []) {
    // Options may come from an untyped factory (configuration, environment).
    const given: unknown = keys;
    if (!Array.isArray(given)) throw new Error('IdempotencyModule: "encryptionKeys" must be an array of { id, key }.');
    this.keys = new Map();
    for (const { id, key } of keys) {
      if (typeof id !== 'string' || id.length === 0 || id.length > 64) {
        throw new Error('IdempotencyModule: "encryptionKeys": each key needs an id of 1 to 64 characters.');
      }
      const bytes = Buffer.isBuffer(key) ? key : Buffer.from(String(key), 'base64');
      if (bytes.length !== 32) {
        throw new Error(
          `IdempotencyModule: "encryptionKeys": key "${id}" must be 32 bytes (AES-256), got ${bytes.length}.`,
        );
      }
      if (this.keys.has(id)) throw new Error(`IdempotencyModule: "encryptionKeys": the id "${id}" is used twice.`);
      this.keys.set(id, bytes);
    }
    this.current = keys[0]?.id;
  }

  seal(identity: RecordIdentity, response: StoredResponse): StoredResponse | SealedResponse {
    if (this.current === undefined) return response;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.keys.get(this.current)!, iv);
    cipher.setAAD(associatedData(identity));
    const data = Buffer.concat([cipher.update(JSON.stringify(response), 'utf8'), cipher.final()]);
    return {
      sealed: 'A256GCM',
      kid: this.current,
      iv: iv.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
      data: data.toString('base64'),
    };
  }

  /** The plain response; throws when it is sealed under a key that is not configured, or was tampered with. */
  open(identity: RecordIdentity, stored: StoredResponse | SealedResponse): StoredResponse {
    if (!isSealed(stored)) return stored;
    const key = this.keys.get(stored.kid);
    if (!key) throw new Error(`the stored response is encrypted with key "${stored.kid}", which is not configured`);
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(stored.iv, 'base64'), {
      authTagLength: 16,
    });
    decipher.setAAD(associatedData(identity));
    decipher.setAuthTag(Buffer.from(stored.tag, 'base64'));
    const plain = Buffer.concat([decipher.update(Buffer.from(stored.data, 'base64')), decipher.final()]);
    return JSON.parse(plain.toString('utf8')) as StoredResponse;
  }
}

function isSealed(stored: StoredResponse | SealedResponse): stored is SealedResponse {
  return (stored as SealedResponse).sealed === 'A256GCM';
}

function associatedData({ scope, method, route, key }: RecordIdentity): Buffer {
  return Buffer.from(JSON.stringify([scope, method, route, key]), 'utf8');
}
