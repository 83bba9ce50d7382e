/**
 * Wraps async handlers so every outcome becomes a precise gRPC status: domain errors map by
 * kind, anything unexpected becomes INTERNAL with a generic message (details go to the log).
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerError, type ErrorKind } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { UnauthenticatedError } from '../transport/caller.js';

const STATUS_OF: Record<ErrorKind, grpc.status> = {
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'not-found': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'permission-denied': grpc.status.PERMISSION_DENIED,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
  unavailable: grpc.status.UNAVAILABLE,
};

export function toServiceError(err: unknown, logger: Logger, method: string): Partial<grpc.StatusObject> {
  if (err instanceof BrokerError) return { code: STATUS_OF[err.kind], details: err.message };
  if (err instanceof UnauthenticatedError) return { code: grpc.status.UNAUTHENTICATED, details: err.message };
  logger.error({ method, err: err instanceof Error ? { message: err.message, stack: err.stack } : String(err) }, 'unexpected error in handler');
  return { code: grpc.status.INTERNAL, details: 'internal error' };
}

/** A unary handler from an async function; never throws into grpc-js. */
export function unary<Req, Res>(
  method: string,
  logger: Logger,
  fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call))
      .then(
        (response) => callback(null, response),
        (err: unknown) => callback(toServiceError(err, logger, method)),
      );
  };
}
