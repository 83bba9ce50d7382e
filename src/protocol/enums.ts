/**
 * The one place where domain names become proto enum names and back: TaskState ACTIVE is
 * TASK_STATE_ACTIVE on the wire, VerifyReason task-not-active is VERIFY_TOKEN_REASON_TASK_NOT_ACTIVE,
 * a NEXT signing key SIGNING_KEY_STATE_NEXT.
 */
import type { SigningKeyState__Output } from '../gen/taskbroker/v1/SigningKeyState.js';
import { VerifyTokenReason } from '../gen/taskbroker/v1/VerifyTokenReason.js';
import { TASK_STATES, VERIFY_REASONS, type TaskState, type VerifyReason } from '../model/task.js';

const TASK_STATE_PREFIX = 'TASK_STATE_';
const VERIFY_REASON_PREFIX = 'VERIFY_TOKEN_REASON_';

export type TaskStateName = `TASK_STATE_${TaskState}`;

export function taskStateName(state: TaskState): TaskStateName {
  return `${TASK_STATE_PREFIX}${state}`;
}

/**
 * A task state from its proto name or its short name, in any case, with '-' for '_'
 * (TASK_STATE_PENDING_APPROVAL, PENDING_APPROVAL, pending-approval). Empty and
 * TASK_STATE_UNSPECIFIED: undefined (no state). Anything else: null (not a state).
 */
export function parseTaskState(value: string): TaskState | undefined | null {
  const name = value.trim().toUpperCase().replace(/-/g, '_');
  if (name === '' || name === `${TASK_STATE_PREFIX}UNSPECIFIED` || name === 'UNSPECIFIED') return undefined;
  const short = name.startsWith(TASK_STATE_PREFIX) ? name.slice(TASK_STATE_PREFIX.length) : name;
  return (TASK_STATES as readonly string[]).includes(short) ? (short as TaskState) : null;
}

type VerifyReasonName = keyof typeof VerifyTokenReason;

/**
 * Every VerifyReason's wire name, derived once when the module loads and checked against the
 * generated enum then: a reason the proto does not have stops the broker at start, not at the
 * first verification that gives it.
 */
const VERIFY_REASON_NAMES = Object.fromEntries(
  VERIFY_REASONS.map((reason) => {
    const name = `${VERIFY_REASON_PREFIX}${reason.toUpperCase().replace(/-/g, '_')}`;
    if (!(name in VerifyTokenReason)) throw new Error(`VerifyReason "${reason}" has no value ${name} in the proto enum VerifyTokenReason`);
    return [reason, name as VerifyReasonName];
  }),
) as Record<VerifyReason, VerifyReasonName>;

export function verifyReasonName(reason: VerifyReason): VerifyReasonName {
  return VERIFY_REASON_NAMES[reason];
}

/** A signing key's state on the wire (the compiler checks the name is one of the proto enum's). */
export function signingKeyStateName(state: 'NEXT' | 'ACTIVE' | 'RETIRED'): SigningKeyState__Output {
  return `SIGNING_KEY_STATE_${state}`;
}
