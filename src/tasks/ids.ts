/**
 * Identifiers that must not be guessable: task IDs carry 144 bits and token IDs 128 bits from
 * the CSPRNG. Knowing an ID still grants nothing (every call checks the owner).
 */
import { randomBytes, randomUUID } from 'node:crypto';

const TASK_ID = /^tsk_[A-Za-z0-9_-]{24}$/;

export function newTaskId(): string {
  return `tsk_${randomBytes(18).toString('base64url')}`;
}

export function isWellFormedTaskId(id: string): boolean {
  return TASK_ID.test(id);
}

export function newTokenId(): string {
  return randomBytes(16).toString('base64url');
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The client's x-request-id when it is reasonable, otherwise a fresh one. */
export function requestIdFrom(candidate: string | undefined): string {
  return candidate && REQUEST_ID.test(candidate) ? candidate : randomUUID();
}
