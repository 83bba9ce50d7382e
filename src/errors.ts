/**
 * Domain errors carry a kind that says what the caller can do about them; the API layer maps
 * kinds to gRPC status codes, so domain code never imports gRPC.
 */
export type ErrorKind =
  | 'invalid-argument'
  | 'not-found'
  | 'already-exists'
  | 'permission-denied'
  | 'unauthenticated'
  | 'failed-precondition'
  | 'resource-exhausted'
  /** A conflict with concurrent work; nothing changed, the whole call may be retried. */
  | 'aborted'
  | 'unavailable';

export class BrokerError extends Error {
  override readonly name = 'BrokerError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** For retryable refusals: when to try again, sent as the grpc-retry-pushback-ms trailer. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/**
 * A caller-supplied value for an error message or a log line: JSON-quoted, at most `max`
 * characters of it, and how many were left out. Messages never echo input unbounded: a
 * megabyte in a field must not become a megabyte in a status trailer or a log line.
 */
export function quoted(value: string, max = 64): string {
  if (value.length <= max) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, max))}${leftOut(value, max)}`;
}

/** The same bound, unquoted: for a caller's value recorded as data (an audit event's details). */
export function clipped(value: string, max: number): string {
  return value.length <= max ? value : `${value.slice(0, max)}${leftOut(value, max)}`;
}

function leftOut(value: string, max: number): string {
  return `… (${value.length - max} more characters)`;
}
