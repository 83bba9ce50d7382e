/**
 * The errors the workload SDK throws: one class per gRPC status a caller can act on, all
 * TaskBrokerError, each carrying the status `code`, the broker's `details`, a `reason` (the kind,
 * e.g. 'not-found') and, for refusals the broker asks to retry later, `retryAfterMs` from the
 * `grpc-retry-pushback-ms` trailer. toTaskBrokerError is the one mapping every call goes through.
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerError, type ErrorKind } from '../errors.js';
import { RETRY_PUSHBACK_TRAILER, STATUS_OF_KIND } from '../protocol/status.js';
import { connectionProblem, type ConnectionContext } from './connect-errors.js';

/** The trailer of gRFC A6 the broker sets on refusals that may be retried later. */
export { RETRY_PUSHBACK_TRAILER };

/** What went wrong, as a word: the broker's error kinds, plus what only the transport can say. */
export type TaskBrokerErrorReason = ErrorKind | 'deadline-exceeded' | 'cancelled' | 'internal' | 'unimplemented' | 'unknown';

export interface TaskBrokerErrorInit {
  code: grpc.status;
  details: string;
  reason: TaskBrokerErrorReason;
  /** One line that names the address, what is wrong and what to do, when the SDK can tell (see `hint`). */
  hint?: string | undefined;
  retryAfterMs?: number | undefined;
  metadata?: grpc.Metadata | undefined;
  cause?: unknown;
}

export class TaskBrokerError extends Error {
  override name = 'TaskBrokerError';
  /** The gRPC status code (grpc.status). */
  readonly code: grpc.status;
  /** The broker's message, e.g. "task tsk_… not found" (or grpc-js's, when the call never reached the broker). */
  readonly details: string;
  readonly reason: TaskBrokerErrorReason;
  /**
   * For a call that did not reach the broker (refused, DNS, deadline, a broker certificate that
   * does not chain to the bundle, the wrong broker) or whose SVID the broker refused: one line
   * naming the address, what is wrong and what to do, e.g. "cannot reach the broker at
   * 127.0.0.1:1: connection refused (…)". The message says it instead of `details`.
   */
  readonly hint: string | undefined;
  /** When the broker said to try again (grpc-retry-pushback-ms), in milliseconds. */
  readonly retryAfterMs: number | undefined;
  /** The response trailers, when the broker answered. */
  readonly metadata: grpc.Metadata | undefined;

  constructor(init: TaskBrokerErrorInit) {
    super(`${grpc.status[init.code] ?? `STATUS ${init.code}`}: ${init.hint ?? init.details}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = init.code;
    this.details = init.details;
    this.reason = init.reason;
    this.hint = init.hint;
    this.retryAfterMs = init.retryAfterMs;
    this.metadata = init.metadata;
  }

  /** The same call may succeed if tried again (after retryAfterMs, when given). */
  get retryable(): boolean {
    return this.code === grpc.status.UNAVAILABLE || this.code === grpc.status.RESOURCE_EXHAUSTED || this.code === grpc.status.ABORTED;
  }
}

/** The task does not exist, or is not yours (the broker does not tell the two apart). */
export class NotFoundError extends TaskBrokerError {
  override name = 'NotFoundError';
}
export class InvalidArgumentError extends TaskBrokerError {
  override name = 'InvalidArgumentError';
}
/** The policy denies it, or the scopes asked for are not the task's. */
export class PermissionDeniedError extends TaskBrokerError {
  override name = 'PermissionDeniedError';
}
/** The broker did not accept the SVID the client presented. */
export class UnauthenticatedError extends TaskBrokerError {
  override name = 'UnauthenticatedError';
}
/** The task's state does not allow it (e.g. a token for a task that is not ACTIVE). */
export class FailedPreconditionError extends TaskBrokerError {
  override name = 'FailedPreconditionError';
}
/** The broker (or its database) cannot be reached right now; retry. */
export class UnavailableError extends TaskBrokerError {
  override name = 'UnavailableError';
}
/** Too many calls: retry after retryAfterMs. */
export class ResourceExhaustedError extends TaskBrokerError {
  override name = 'ResourceExhaustedError';
}
/** The idempotency key was used before with another spec. */
export class AlreadyExistsError extends TaskBrokerError {
  override name = 'AlreadyExistsError';
}
/** A conflict with concurrent work; nothing changed, retry the call. */
export class AbortedError extends TaskBrokerError {
  override name = 'AbortedError';
}
export class DeadlineExceededError extends TaskBrokerError {
  override name = 'DeadlineExceededError';
}

type ErrorClass = new (init: TaskBrokerErrorInit) => TaskBrokerError;

const BY_CODE: Partial<Record<grpc.status, [ErrorClass, TaskBrokerErrorReason]>> = {
  [grpc.status.NOT_FOUND]: [NotFoundError, 'not-found'],
  [grpc.status.INVALID_ARGUMENT]: [InvalidArgumentError, 'invalid-argument'],
  [grpc.status.PERMISSION_DENIED]: [PermissionDeniedError, 'permission-denied'],
  [grpc.status.UNAUTHENTICATED]: [UnauthenticatedError, 'unauthenticated'],
  [grpc.status.FAILED_PRECONDITION]: [FailedPreconditionError, 'failed-precondition'],
  [grpc.status.UNAVAILABLE]: [UnavailableError, 'unavailable'],
  [grpc.status.RESOURCE_EXHAUSTED]: [ResourceExhaustedError, 'resource-exhausted'],
  [grpc.status.ALREADY_EXISTS]: [AlreadyExistsError, 'already-exists'],
  [grpc.status.ABORTED]: [AbortedError, 'aborted'],
  [grpc.status.DEADLINE_EXCEEDED]: [DeadlineExceededError, 'deadline-exceeded'],
  [grpc.status.CANCELLED]: [TaskBrokerError, 'cancelled'],
  [grpc.status.INTERNAL]: [TaskBrokerError, 'internal'],
  [grpc.status.UNIMPLEMENTED]: [TaskBrokerError, 'unimplemented'],
};

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number' && 'metadata' in err;
}

function retryAfterOf(metadata: grpc.Metadata | undefined): number | undefined {
  const value = metadata?.get(RETRY_PUSHBACK_TRAILER)[0];
  const ms = value === undefined ? NaN : Number(String(value));
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

/** The error class for a status code (TaskBrokerError itself for codes without one of their own). */
export function taskBrokerError(code: grpc.status, details: string, extra: Omit<TaskBrokerErrorInit, 'code' | 'details' | 'reason'> = {}): TaskBrokerError {
  const [ErrorClass, reason] = BY_CODE[code] ?? [TaskBrokerError, 'unknown'];
  return new ErrorClass({ code, details, reason, ...extra });
}

/**
 * Any error of a call as a TaskBrokerError: a gRPC status with its trailers, or an input the
 * SDK refused before sending (INVALID_ARGUMENT). Anything else is returned as it is. With the
 * `connection` (the address dialled), a call that never reached the broker gets its `hint`.
 */
export function toTaskBrokerError(err: unknown, connection?: ConnectionContext): unknown {
  if (err instanceof TaskBrokerError) return err;
  if (isServiceError(err)) {
    const details = err.details || err.message;
    const hint = connection ? connectionProblem(err.code, details, connection)?.text : undefined;
    return taskBrokerError(err.code, details, { metadata: err.metadata, retryAfterMs: retryAfterOf(err.metadata), hint, cause: err });
  }
  if (err instanceof BrokerError) return taskBrokerError(STATUS_OF_KIND[err.kind], err.message, { retryAfterMs: err.retryAfterMs, cause: err });
  return err;
}
