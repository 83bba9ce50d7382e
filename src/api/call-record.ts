/**
 * One record per gRPC call, however it ends: answered by a handler, refused before any handler
 * (not authenticated, over the caller's quota, a message that does not decode or is too large),
 * cut by its deadline or cancelled by the client. Every call is counted and timed by method and
 * status and leaves one log line. Requests and responses are never logged (they carry tokens).
 *
 * The recorder is the outermost interceptor: it sees the status the transport itself sends (an
 * over-size message, a deadline), which never passes through the interceptors above it. It also
 * bounds every status message, so no caller input echoed into an error can grow a trailer past
 * what HTTP/2 peers accept (a stalled stream, not an error, is what an oversized trailer gets).
 *
 * With tracing on, it is also where each call's SERVER span starts (once its metadata, with the
 * caller's traceparent, arrived) and ends (with the status the call ended with).
 */
import * as grpc from '@grpc/grpc-js';
import { LogThrottle } from '../observability/log-throttle.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics, GrpcType, MethodMetrics } from '../observability/metrics.js';
import {
  spanClock,
  startServerSpan,
  traceContextFrom,
  tracingEnabled,
  TRACEPARENT_HEADER,
  TRACESTATE_HEADER,
  type ServerSpan,
} from '../observability/tracing.js';
import type { CallTrace } from '../model/task.js';
import { requestIdFrom } from '../tasks/ids.js';
import { callerOf } from '../transport/caller.js';

/** A status as a server call sends it (grpc-js's PartialStatusObject, which it does not export). */
type PartialStatus = Pick<grpc.StatusObject, 'code' | 'details'> & { metadata?: grpc.Metadata | null };

export const REQUEST_ID_HEADER = 'x-request-id';
/** Longest status message sent to a client or written to a log line (characters). */
export const MAX_STATUS_DETAILS = 512;

const requestIds = new WeakMap<grpc.Metadata, string>();

/** The call's request id: the client's `x-request-id` when reasonable, else a fresh one; the same for every asker. */
export function requestIdOf(call: { metadata: grpc.Metadata }): string {
  let id = requestIds.get(call.metadata);
  if (id === undefined) {
    const header = call.metadata.get(REQUEST_ID_HEADER)[0];
    id = requestIdFrom(typeof header === 'string' ? header : undefined);
    requestIds.set(call.metadata, id);
  }
  return id;
}

const traces = new WeakMap<grpc.Metadata, CallTrace | null>();

/**
 * The call's trace context: its server span's when tracing is on, else the caller's valid
 * `traceparent` (undefined: none, or a malformed one, which is ignored). The same for every asker.
 */
export function callTraceOf(call: { metadata: grpc.Metadata }): CallTrace | undefined {
  let trace = traces.get(call.metadata);
  if (trace === undefined) {
    const traceparent = call.metadata.get(TRACEPARENT_HEADER);
    // Most calls carry none: one metadata lookup, nothing parsed or cached.
    if (traceparent.length === 0) return undefined;
    trace = traceContextFrom(traceparent, call.metadata.get(TRACESTATE_HEADER)) ?? null;
    traces.set(call.metadata, trace);
  }
  return trace ?? undefined;
}

/** The name of a status code (OK, NOT_FOUND, ...), as metrics and logs show it. */
export function statusName(code: grpc.status): string {
  return grpc.status[code] ?? String(code);
}

/** How a method streams (go-grpc-prometheus's `grpc_type`). */
function grpcTypeOf(descriptor: { requestStream: boolean; responseStream: boolean }): GrpcType {
  if (descriptor.requestStream) return descriptor.responseStream ? 'bidi_stream' : 'client_stream';
  return descriptor.responseStream ? 'server_stream' : 'unary';
}

/** Splits a gRPC method path (/pkg.Service/Method) into service and method. */
export function splitMethodPath(path: string): { service: string; method: string } {
  const match = /^\/([^/]+)\/([^/]+)$/.exec(path);
  return match ? { service: match[1] ?? '', method: match[2] ?? '' } : { service: 'unknown', method: 'unknown' };
}

/** The host part of a peer address (host:port, [v6]:port), so one host's reconnections share a budget. */
function peerHost(peer: string): string {
  const colon = peer.lastIndexOf(':');
  return colon > 0 ? peer.slice(0, colon) : peer;
}

/** Status codes that point at the broker rather than the caller: logged as warnings. */
const SERVER_SIDE = new Set<grpc.status>([
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
  grpc.status.DATA_LOSS,
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
]);

function boundedDetails(details: string | undefined): string | undefined {
  if (details === undefined || details.length <= MAX_STATUS_DETAILS) return details;
  return `${details.slice(0, MAX_STATUS_DETAILS - 1)}…`;
}

/** grpc-js's own wording for an over-size request, in the broker's terms. */
function transportDetails(status: PartialStatus, maxMessageBytes: number | undefined): string | undefined {
  const details = status.details;
  if (status.code !== grpc.status.RESOURCE_EXHAUSTED || !details) return details;
  const size = /Received message larger than max \((\d+) vs/.exec(details);
  if (size) return `request message is ${size[1] ?? 'too many'} bytes; the limit is ${maxMessageBytes ?? 'smaller'} bytes`;
  if (/decompresses to a size larger/.test(details)) return `request message decompresses to more than the limit of ${maxMessageBytes ?? 'the'} bytes`;
  return details;
}

export interface CallRecorderOptions {
  logger: Logger;
  metrics?: BrokerMetrics;
  /** The request size limit the transport enforces, to name it in the refusal. */
  maxMessageBytes?: number;
}

interface StatusSink {
  sendStatus(status: PartialStatus): void;
}

/** The outermost server interceptor: records every call once, and bounds its status message. */
export function callRecorder({ logger, metrics, maxMessageBytes }: CallRecorderOptions): grpc.ServerInterceptor {
  const refusals = new LogThrottle(logger, { perInterval: 20, intervalMs: 10_000, maxKinds: 1_000 });
  // Per method path (grpc-js runs interceptors only for registered ones): its names and metrics, found once.
  const methods = new Map<string, { service: string; method: string; metrics: MethodMetrics | undefined }>();
  return (descriptor, call) => {
    let known = methods.get(descriptor.path);
    if (!known) {
      const { service, method } = splitMethodPath(descriptor.path);
      known = { service, method, metrics: metrics?.methodMetrics(service, method, grpcTypeOf(descriptor)) };
      methods.set(descriptor.path, known);
    }
    const { service, method, metrics: methodMetrics } = known;
    const started = process.hrtime.bigint();
    const startTime = tracingEnabled() ? spanClock() : 0;
    let metadata: grpc.Metadata | undefined;
    let span: ServerSpan | undefined;
    let recorded = false;
    methodMetrics?.inFlight.inc();
    methodMetrics?.started.inc();

    const record = (code: grpc.status, details: string | undefined) => {
      if (recorded) return;
      recorded = true;
      try {
        // A call refused before its metadata was read still gets its span (a root: no traceparent was read).
        if (startTime > 0 && !span) span = startServerSpan({ service, method, peer: call.getPeer(), startTime, parent: undefined });
        span?.end(code, statusName(code), details);
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        methodMetrics?.inFlight.dec();
        methodMetrics?.handled(code).inc();
        methodMetrics?.duration.observe(seconds);
        let caller: string | undefined;
        try {
          caller = metadata ? callerOf({ metadata }).spiffeId.toString() : undefined;
        } catch {
          caller = undefined;
        }
        const trace = span?.trace ?? (metadata ? callTraceOf({ metadata }) : undefined);
        const line = {
          service,
          method,
          requestId: metadata ? requestIdOf({ metadata }) : undefined,
          ...(trace ? { trace_id: trace.traceId } : {}),
          ...(span ? { span_id: span.trace.spanId } : {}),
          caller,
          peer: call.getPeer(),
          code: statusName(code),
          durationMs: Math.round(seconds * 1e6) / 1e3,
          ...(code !== grpc.status.OK && details ? { details } : {}),
        };
        if (code === grpc.status.RESOURCE_EXHAUSTED || code === grpc.status.UNAUTHENTICATED) {
          // A caller over its quota, or a peer whose certificate is refused, can make thousands of
          // these a second: their lines are throttled per caller, or per peer host when there is
          // no verified caller (the metric counts every one; the next line says how many were left out).
          refusals.log('info', caller ?? `peer:${peerHost(line.peer)}`, line, 'rpc');
        } else if (SERVER_SIDE.has(code)) logger.warn(line, 'rpc');
        else logger.info(line, 'rpc');
      } catch (err) {
        logger.error({ service, method, err: (err as Error).message }, 'rpc could not be recorded');
      }
    };

    // Replaces sendStatus on the call below (the transport's own call when this interceptor is
    // first): statuses it raises itself (size, deadline) call this.sendStatus and land here too.
    const sink = call as unknown as StatusSink;
    const send = sink.sendStatus.bind(call);
    sink.sendStatus = (status) => {
      const details = boundedDetails(transportDetails(status, maxMessageBytes));
      record(status.code, details);
      send({ ...status, details: details ?? '' });
    };

    return new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (md, nextMetadata) => {
            metadata = md;
            requestIdOf({ metadata: md });
            if (startTime > 0) {
              span = startServerSpan({ service, method, peer: call.getPeer(), startTime, parent: callTraceOf({ metadata: md }) });
              // From here on the call's trace is its server span's: the parent of its database spans, and the trace id of its audit events.
              if (span) traces.set(md, span.trace);
            }
            nextMetadata(md);
          },
          // Also called after every status; a call that ends here without one was cancelled by the client.
          onCancel: () => record(grpc.status.CANCELLED, 'cancelled by the client'),
        });
      },
    });
  };
}
