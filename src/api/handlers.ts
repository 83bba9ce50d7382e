/**
 * Wraps async handlers so every outcome becomes a precise gRPC status: domain errors map by
 * kind, anything unexpected becomes INTERNAL with a generic message (details go to the log),
 * and every call is counted, timed and logged once.
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerError, type ErrorKind } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { requestIdFrom } from '../tasks/ids.js';
import { callerOf, UnauthenticatedError } from '../transport/caller.js';

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

export function toServiceError(err: unknown, logger: Logger, method: string, requestId?: string): Partial<grpc.StatusObject> {
  if (err instanceof BrokerError) return { code: STATUS_OF[err.kind], details: err.message };
  if (err instanceof UnauthenticatedError) return { code: grpc.status.UNAUTHENTICATED, details: err.message };
  logger.error({ method, requestId, err: err instanceof Error ? { message: err.message, stack: err.stack } : String(err) }, 'unexpected error in handler');
  return { code: grpc.status.INTERNAL, details: 'internal error' };
}

/** What every handler of a service shares: where its RPC lines go and what counts them. */
export interface RpcContext {
  /** Full gRPC service name, e.g. taskbroker.v1.TaskBroker. */
  readonly service: string;
  readonly logger: Logger;
  readonly metrics?: BrokerMetrics;
}

export const REQUEST_ID_HEADER = 'x-request-id';

const requestIds = new WeakMap<object, string>();

/** The call's request id: the client's `x-request-id` when reasonable, else a fresh one; the same for every asker. */
export function requestIdOf(call: { metadata: grpc.Metadata }): string {
  let id = requestIds.get(call);
  if (id === undefined) {
    const header = call.metadata.get(REQUEST_ID_HEADER)[0];
    id = requestIdFrom(typeof header === 'string' ? header : undefined);
    requestIds.set(call, id);
  }
  return id;
}

/** Status codes that point at the broker rather than the caller: logged as warnings. */
const SERVER_SIDE = new Set<grpc.status>([grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.DATA_LOSS, grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/** The name of a status code (OK, NOT_FOUND, ...), as metrics and logs show it. */
export function statusName(code: grpc.status): string {
  return grpc.status[code] ?? String(code);
}

/**
 * A unary handler from an async function; never throws into grpc-js. Every call is counted and
 * timed by method and status, and leaves one log line: method, request id, caller SPIFFE ID,
 * status, duration. Requests and responses are never logged (they carry tokens).
 */
export function unary<Req, Res>(method: string, ctx: RpcContext, fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  const { service, logger, metrics } = ctx;
  return (call, callback) => {
    const started = process.hrtime.bigint();
    metrics?.rpcInFlight.inc({ service, method });
    const done = (status: Partial<grpc.StatusObject> | null) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const code = status?.code ?? grpc.status.OK;
      // A call the client gave up on gets no status from us; count it as what the client saw.
      const outcome = call.cancelled ? grpc.status.CANCELLED : code;
      metrics?.rpcInFlight.dec({ service, method });
      metrics?.observeRpc(service, method, statusName(outcome), seconds);
      let caller: string | undefined;
      try {
        caller = callerOf(call).spiffeId.toString();
      } catch {
        caller = undefined;
      }
      const line = {
        service,
        method,
        requestId: requestIdOf(call),
        caller,
        peer: call.getPeer(),
        code: statusName(outcome),
        durationMs: Math.round(seconds * 1e6) / 1e3,
        ...(outcome !== grpc.status.OK && status?.details ? { details: status.details } : {}),
      };
      if (SERVER_SIDE.has(outcome)) logger.warn(line, 'rpc');
      else logger.info(line, 'rpc');
    };
    const finish = (status: Partial<grpc.StatusObject> | null) => {
      try {
        done(status);
      } catch (err) {
        logger.error({ service, method, err: (err as Error).message }, 'rpc could not be recorded');
      }
    };
    Promise.resolve()
      .then(() => fn(call))
      .then(
        (response) => {
          callback(null, response);
          finish(null);
        },
        (err: unknown) => {
          const status = toServiceError(err, logger, method, requestIdOf(call));
          callback(status);
          finish(status);
        },
      );
  };
}
