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
  ) {
    super(message);
  }
}
