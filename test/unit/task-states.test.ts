/**
 * The task states and verification reasons as one table: which states are live or final, and
 * how each name crosses the wire. The wire names are checked against the generated proto enums,
 * so a state or reason added on one side only fails here, not in a client.
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { TaskState as ProtoTaskState } from '../../src/gen/taskbroker/v1/TaskState.js';
import { VerifyTokenReason } from '../../src/gen/taskbroker/v1/VerifyTokenReason.js';
import { isLive, LIVE_STATES, TASK_STATES, VERIFY_REASONS, type FinalState, type TaskState, type VerifyReason } from '../../src/model/task.js';
import { parseTaskState, taskStateName, verifyReasonName } from '../../src/protocol/enums.js';

/** Every state, whether it can still change, and its proto name, written out. */
const STATES: Record<TaskState, { live: boolean; wire: string }> = {
  PENDING_APPROVAL: { live: true, wire: 'TASK_STATE_PENDING_APPROVAL' },
  ACTIVE: { live: true, wire: 'TASK_STATE_ACTIVE' },
  COMPLETED: { live: false, wire: 'TASK_STATE_COMPLETED' },
  CANCELLED: { live: false, wire: 'TASK_STATE_CANCELLED' },
  REVOKED: { live: false, wire: 'TASK_STATE_REVOKED' },
  EXPIRED: { live: false, wire: 'TASK_STATE_EXPIRED' },
};

/** The final states, typed by FinalState: a state added to or taken from it fails to compile here. */
const FINAL: Record<FinalState, true> = { COMPLETED: true, CANCELLED: true, REVOKED: true, EXPIRED: true };

const REASONS: Record<VerifyReason, string> = {
  valid: 'VERIFY_TOKEN_REASON_VALID',
  malformed: 'VERIFY_TOKEN_REASON_MALFORMED',
  'bad-signature': 'VERIFY_TOKEN_REASON_BAD_SIGNATURE',
  expired: 'VERIFY_TOKEN_REASON_EXPIRED',
  revoked: 'VERIFY_TOKEN_REASON_REVOKED',
  'task-not-active': 'VERIFY_TOKEN_REASON_TASK_NOT_ACTIVE',
  'audience-mismatch': 'VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH',
  'binding-mismatch': 'VERIFY_TOKEN_REASON_BINDING_MISMATCH',
  'task-hash-mismatch': 'VERIFY_TOKEN_REASON_TASK_HASH_MISMATCH',
  'presenter-required': 'VERIFY_TOKEN_REASON_PRESENTER_REQUIRED',
  'uses-exhausted': 'VERIFY_TOKEN_REASON_USES_EXHAUSTED',
};

const sorted = (values: Iterable<string>) => [...values].sort();

describe('task states', () => {
  it('the table names every state exactly once', () => {
    expect(new Set(TASK_STATES).size).toBe(TASK_STATES.length);
    expect(sorted(TASK_STATES)).toEqual(sorted(Object.keys(STATES)));
  });

  it.each(Object.entries(STATES))('%s is live: %j', (state, { live }) => {
    expect(isLive(state as TaskState)).toBe(live);
    expect(LIVE_STATES.includes(state as TaskState)).toBe(live);
  });

  it('the final states are the states that are not live, and FinalState is exactly them', () => {
    expect(sorted(TASK_STATES.filter((s) => !isLive(s)))).toEqual(sorted(Object.keys(FINAL)));
    expect(sorted(LIVE_STATES)).toEqual(['ACTIVE', 'PENDING_APPROVAL']);
    expectTypeOf<FinalState>().toEqualTypeOf<'COMPLETED' | 'CANCELLED' | 'REVOKED' | 'EXPIRED'>();
    expectTypeOf<Exclude<TaskState, FinalState>>().toEqualTypeOf<'PENDING_APPROVAL' | 'ACTIVE'>();
  });
});

describe('task state names on the wire', () => {
  it.each(Object.entries(STATES))('%s is %j, a value of the generated enum', (state, { wire }) => {
    expect(taskStateName(state as TaskState)).toBe(wire);
    expect(Object.values(ProtoTaskState)).toContain(wire);
  });

  it('every generated state but UNSPECIFIED is a domain state', () => {
    const generated = Object.values(ProtoTaskState).filter((n) => n !== 'TASK_STATE_UNSPECIFIED');
    expect(sorted(generated)).toEqual(sorted(TASK_STATES.map(taskStateName)));
  });

  it.each(TASK_STATES)('%s parses back from every accepted spelling', (state) => {
    const long = taskStateName(state);
    const spellings = [
      long,
      state,
      long.toLowerCase(),
      state.toLowerCase(),
      state.toLowerCase().replaceAll('_', '-'),
      long.toLowerCase().replaceAll('_', '-'),
      `  ${state}\t`,
    ];
    for (const spelling of spellings) expect(parseTaskState(spelling), spelling).toBe(state);
  });

  it.each(['', '   ', 'TASK_STATE_UNSPECIFIED', 'UNSPECIFIED', 'unspecified', 'task-state-unspecified'])('%j is no state (undefined)', (value) => {
    expect(parseTaskState(value)).toBeUndefined();
  });

  it.each([
    'DONE',
    'TASK_STATE_DONE',
    'TASK_STATE_',
    'TASK_STATE',
    'TASK_STATE_TASK_STATE_ACTIVE',
    'ACTIVE_',
    'STATE_ACTIVE',
    'ACT IVE',
    'PENDING APPROVAL',
    'pendingapproval',
    '0',
    '2',
  ])('%j is not a state (null)', (value) => {
    expect(parseTaskState(value)).toBeNull();
  });
});

describe('verification reasons on the wire', () => {
  it('the table names every reason exactly once', () => {
    expect(new Set(VERIFY_REASONS).size).toBe(VERIFY_REASONS.length);
    expect(sorted(VERIFY_REASONS)).toEqual(sorted(Object.keys(REASONS)));
  });

  it.each(Object.entries(REASONS))('%s is %s, a value of the generated enum', (reason, wire) => {
    expect(verifyReasonName(reason as VerifyReason)).toBe(wire);
    expect(VerifyTokenReason[wire as keyof typeof VerifyTokenReason]).toBe(wire);
  });

  it("every generated reason but UNSPECIFIED and the offline verifiers' own is a domain reason, and no two reasons share a name", () => {
    const names = VERIFY_REASONS.map(verifyReasonName);
    expect(new Set(names).size).toBe(names.length);
    // REVOCATION_STATUS_UNKNOWN is given only by offline verifiers (the verifier SDK), never by VerifyToken.
    const offlineOnly = ['VERIFY_TOKEN_REASON_UNSPECIFIED', 'VERIFY_TOKEN_REASON_REVOCATION_STATUS_UNKNOWN'];
    const generated = Object.values(VerifyTokenReason).filter((n) => !offlineOnly.includes(n));
    expect(sorted(generated)).toEqual(sorted(names));
  });
});
