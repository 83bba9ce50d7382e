/**
 * Wraps async handlers so every outcome becomes a precise gRPC status: domain errors map by
 * kind, database failures become the retryable code they call for (UNAVAILABLE, ABORTED), and
 * anything unexpected becomes INTERNAL with a generic message (details go to the log). Counting,
 * timing and the log line of each call are the call recorder's (call-record.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerError, type ErrorKind } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { brokerErrorFor } from '../store/failures.js';
import { UnauthenticatedError } from '../transport/caller.js';
import { RETRY_PUSHBACK_HEADER } from './admission-interceptor.js';
import { requestIdOf } from './call-record.js';

const STATUS_OF: Record<ErrorKind, grpc.status> = {
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'not-found': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'permission-denied': grpc.status.PERMISSION_DENIED,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
  aborted: grpc.status.ABORTED,
  unavailable: grpc.status.UNAVAILABLE,
};

export function toServiceError(err: unknown, logger: Logger, method: string, requestId?: string): Partial<grpc.StatusObject> {
  if (err instanceof BrokerError) {
    if (err.retryAfterMs === undefined) return { code: STATUS_OF[err.kind], details: err.message };
    const metadata = new grpc.Metadata();
    metadata.set(RETRY_PUSHBACK_HEADER, String(err.retryAfterMs));
    return { code: STATUS_OF[err.kind], details: err.message, metadata };
  }
  if (err instanceof UnauthenticatedError) return { code: grpc.status.UNAUTHENTICATED, details: err.message };
  const database = brokerErrorFor(err);
  if (database) {
    logger.warn({ method, requestId, err: err instanceof Error ? err.message : String(err) }, 'database failure');
    return { code: STATUS_OF[database.kind], details: database.message };
  }
  logger.error({ method, requestId, err: err instanceof Error ? { message: err.message, stack: err.stack } : String(err) }, 'unexpected error in handler');
  return { code: grpc.status.INTERNAL, details: 'internal error' };
}

/** What every handler of a service shares: where unexpected errors are logged. */
export interface RpcContext {
  readonly logger: Logger;
}

/** A unary handler from an async function; never throws into grpc-js. */
export function unary<Req, Res>(
  method: string,
  ctx: RpcContext,
  fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res,
): grpc.handleUnaryCall<Req, Res> {
  const { logger } = ctx;
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call))
      .then(
        (response) => callback(null, response),
        (err: unknown) => callback(toServiceError(err, logger, method, requestIdOf(call))),
      );
  };
}
