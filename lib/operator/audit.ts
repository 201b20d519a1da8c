import type { RecordIdentity } from '../core/record.js';
import { recordRef } from './record-ref.js';

/** The audit log line of an operator action on one record: what, where, which record (by ref), what happened. */
export function auditLine(action: 'release' | 'delete', identity: RecordIdentity, result: string): string {
  return `operator ${action}: ${identity.method} ${identity.route}, record ${recordRef(identity)}: ${result}`;
}
