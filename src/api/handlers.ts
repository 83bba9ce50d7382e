/**
 * Wraps async handlers so every outcome becomes a precise gRPC status: domain errors map by
 * kind, database failures become the retryable code they call for (UNAVAILABLE, ABORTED), and
 * anything unexpected becomes INTERNAL with a generic message (details go to the log). Counting,
 * timing and the log line of each call are the call recorder's (call-record.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerError } from '../errors.js';
import { RETRY_PUSHBACK_TRAILER, STATUS_OF_KIND } from '../protocol/status.js';
import type { Logger } from '../observability/logger.js';
import { brokerErrorFor } from '../store/failures.js';
import { UnauthenticatedError } from '../transport/caller.js';
import { requestIdOf } from './call-record.js';

export function toServiceError(err: unknown, logger: Logger, method: string, requestId?: string): Partial<grpc.StatusObject> {
  if (err instanceof BrokerError) {
    if (err.retryAfterMs === undefined) return { code: STATUS_OF_KIND[err.kind], details: err.message };
    const metadata = new grpc.Metadata();
    metadata.set(RETRY_PUSHBACK_TRAILER, String(err.retryAfterMs));
    return { code: STATUS_OF_KIND[err.kind], details: err.message, metadata };
  }
  if (err instanceof UnauthenticatedError) return { code: grpc.status.UNAUTHENTICATED, details: err.message };
  const database = brokerErrorFor(err);
  if (database) {
    logger.warn({ method, requestId, err: err instanceof Error ? err.message : String(err) }, 'database failure');
    return { code: STATUS_OF_KIND[database.kind], details: database.message };
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
