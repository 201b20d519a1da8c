import { describe, expect, it } from '@jest/globals';
import { decideClaim, type ClaimDecision, type IdempotencyRecord, type RecordStatus } from '../../lib/core/record.js';

const FINGERPRINT = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);

function observe(status: RecordStatus, { expired = false, leaseLapsed = false } = {}) {
  const now = new Date('2024-01-01T00:00:00Z');
  const record: IdempotencyRecord = {
    scope: '',
    method: 'POST',
    route: '/payments',
    key: 'k',
    status,
    fingerprint: FINGERPRINT,
    ownerToken: status === 'in_progress' ? 'token' : null,
    lockedUntil: status === 'in_progress' ? now : null,
    response: status === 'completed' ? { status: 201, headers: {}, kind: 'empty' } : null,
    createdAt: now,
    completedAt: status === 'completed' ? now : null,
    expiresAt: now,
  };
  return { record, expired, leaseLapsed };
}

describe('decideClaim', () => {
  // Every combination of (status, expired, lease lapsed, same fingerprint): the precedence
  // is expiry, then payload, then status, then lease.
  const cases: Array<[RecordStatus, boolean, boolean, boolean, ClaimDecision]> = [
    // status, expired, leaseLapsed, same fingerprint → decision
    ['completed', true, false, true, 'reclaim'],
    ['completed', true, false, false, 'reclaim'],
    ['completed', true, true, true, 'reclaim'],
    ['completed', true, true, false, 'reclaim'],
    ['in_progress', true, false, true, 'reclaim'],
    ['in_progress', true, false, false, 'reclaim'],
    ['in_progress', true, true, true, 'reclaim'],
    ['in_progress', true, true, false, 'reclaim'],
    ['completed', false, false, false, 'mismatch'],
    ['completed', false, true, false, 'mismatch'],
    ['in_progress', false, false, false, 'mismatch'],
    ['in_progress', false, true, false, 'mismatch'],
    ['completed', false, false, true, 'replay'],
    ['completed', false, true, true, 'replay'],
    ['in_progress', false, false, true, 'in-progress'],
    ['in_progress', false, true, true, 'take-over'],
  ];

  it.each(cases)(
    '%s record, expired=%s, leaseLapsed=%s, same fingerprint=%s → %s',
    (status, expired, leaseLapsed, same, decision) => {
      expect(decideClaim(observe(status, { expired, leaseLapsed }), same ? FINGERPRINT : OTHER)).toBe(decision);
    },
  );

  it('compares fingerprints exactly', () => {
    expect(decideClaim(observe('completed'), FINGERPRINT.toUpperCase())).toBe('mismatch');
    expect(decideClaim(observe('completed'), FINGERPRINT + ' ')).toBe('mismatch');
  });
});
