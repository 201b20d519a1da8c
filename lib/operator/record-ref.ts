import { createHash } from 'node:crypto';
import type { RecordIdentity } from '../core/record.js';

/**
 * A short, stable name for a record that reveals neither its key nor its scope: what the
 * audit log and the command-line tool print, so that an entry can be matched to a record
 * without the log holding keys (a key is a credential of sorts: whoever has it, with the
 * caller's scope, gets the stored response). Computed over the identity as stored.
 */
export function recordRef({ scope, method, route, key }: RecordIdentity): string {
  return createHash('sha256')
    .update(JSON.stringify([scope, method, route, key]))
    .digest('hex')
    .slice(0, 12);
}
