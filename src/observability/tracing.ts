/**
 * OpenTelemetry tracing: a SERVER span per RPC (what the official grpc instrumentation records,
 * made here at the broker's own per-call layer, api/call-record.ts), a CLIENT span per call for
 * its database round trip (tasks/task-access.ts), and the W3C trace context a caller sends in
 * `traceparent` / `tracestate`.
 *
 * Off by default: nothing of OpenTelemetry is loaded (the API and the SDK come in by dynamic
 * import() when tracing starts); a call then pays a check of `tracingEnabled()` and a lookup of
 * its `traceparent` header (parsed only when present). Not measured apart in bench/.
 * What turns it on is the standard environment (tracingDecision): OTEL_TRACES_EXPORTER set to
 * an exporter, or an OTLP endpoint set (OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless OTEL_TRACES_EXPORTER is `none` or
 * OTEL_SDK_DISABLED is `true`. NodeSDK then reads the rest of OTEL_* itself (endpoint, protocol,
 * headers, service name, resource attributes, sampler, batch processor).
 *
 * A valid `traceparent` is parsed whether tracing is on or off (parseTraceparent): its trace id
 * goes into the audit events of the call (details.trace_id) and its log line. A malformed one is
 * ignored, as W3C Trace Context asks.
 *
 * Parents are always explicit (startSpan(name, options, parentContext)): no context manager is
 * registered, so tracing never puts async_hooks on the broker's hot path.
 */
import type * as OpenTelemetryApi from '@opentelemetry/api';
import type { Attributes, Span, TimeInput, Tracer, TracerProvider } from '@opentelemetry/api';
import type { CallTrace } from '../model/task.js';
import { LogThrottle } from './log-throttle.js';
import type { Logger } from './logger.js';

/** The API module, as the dynamic import() hands it over (a type-only import: nothing is loaded). */
type Api = typeof OpenTelemetryApi;

/** The gRPC metadata keys of W3C Trace Context. */
export const TRACEPARENT_HEADER = 'traceparent';
export const TRACESTATE_HEADER = 'tracestate';

/** The instrumentation scope of the broker's spans. */
const TRACER_NAME = 'task-broker';

/** W3C: a tracestate longer than this may be dropped; it is (and a traceparent that long is not one). */
const MAX_HEADER = 512;

interface Runtime {
  readonly api: Api;
  readonly tracer: Tracer;
  /** 'sdk': NodeSDK from the environment; 'test': a tracer provider a test handed in. */
  readonly source: 'sdk' | 'test';
  shutdown(): Promise<void>;
}

let runtime: Runtime | undefined;
let sdkLoaded = false;

/** Whether spans are made (checked once per call). */
export function tracingEnabled(): boolean {
  return runtime !== undefined;
}

/** What the module holds now (tests and diagnostics): on or off, and whether the SDK was ever loaded. */
export function tracingState(): { enabled: boolean; source: 'sdk' | 'test' | undefined; sdkLoaded: boolean } {
  return { enabled: runtime !== undefined, source: runtime?.source, sdkLoaded };
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ALL_ZERO = /^0+$/;

/**
 * A `traceparent` value (W3C Trace Context, level 1): version-traceid-parentid-flags in lowercase
 * hex. Undefined when malformed: version ff, an all-zero trace or parent id, extra fields after a
 * version 00 header, upper case, anything else.
 */
export function parseTraceparent(value: string): CallTrace | undefined {
  if (value.length > MAX_HEADER) return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(spanId)) return undefined;
  return { traceId, spanId, sampled: (Number.parseInt(flags, 16) & 1) === 1 };
}

/**
 * The caller's trace context from the values of its `traceparent` and `tracestate` metadata:
 * exactly one valid traceparent, else none (two traceparents are as good as none). The
 * tracestate values are joined (W3C: several headers are one list) and kept only when short.
 */
export function traceContextFrom(traceparents: readonly unknown[], tracestates: readonly unknown[] = []): CallTrace | undefined {
  if (traceparents.length !== 1 || typeof traceparents[0] !== 'string') return undefined;
  const parent = parseTraceparent(traceparents[0]);
  if (!parent) return undefined;
  const state = tracestates.filter((v): v is string => typeof v === 'string').join(',');
  return state && state.length <= MAX_HEADER ? { ...parent, state } : parent;
}

// ---- spans ------------------------------------------------------------------------------------

function parentContext(rt: Runtime, parent: CallTrace | undefined, isRemote: boolean) {
  const { api } = rt;
  if (!parent) return api.ROOT_CONTEXT;
  return api.trace.setSpanContext(api.ROOT_CONTEXT, {
    traceId: parent.traceId,
    spanId: parent.spanId,
    traceFlags: parent.sampled ? api.TraceFlags.SAMPLED : api.TraceFlags.NONE,
    isRemote,
    ...(parent.state ? { traceState: api.createTraceState(parent.state) } : {}),
  });
}

function callTraceOf(span: Span): CallTrace {
  const c = span.spanContext();
  const state = c.traceState?.serialize();
  return { traceId: c.traceId, spanId: c.spanId, sampled: (c.traceFlags & 1) === 1, ...(state ? { state } : {}) };
}

/**
 * gRPC status codes a server counts as its own error (OpenTelemetry RPC semantic conventions,
 * gRPC servers): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. Every
 * other code leaves the span status unset.
 */
const SERVER_ERROR_CODES = new Set([2, 4, 12, 13, 14, 15]);

/** The host and port of a grpc-js peer string (host:port, [v6]:port). */
export function peerAttributes(peer: string): Attributes {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(peer);
  if (!m) return peer && peer !== 'unknown' ? { 'network.peer.address': peer } : {};
  return { 'network.peer.address': m[1], 'network.peer.port': Number(m[2]) };
}

/**
 * Span times, in epoch milliseconds with a sub-millisecond part, all read from one monotonic
 * clock. Every span gets explicit start and end times from it: a span given only a start time
 * would end at Date.now() (whole milliseconds, and a clock NTP can step), so a child could
 * appear to end after its parent.
 */
export function spanClock(): number {
  return performance.timeOrigin + performance.now();
}

export interface ServerSpan {
  /** The span's own context: the parent of the call's database spans, and its trace id the audit's. */
  readonly trace: CallTrace;
  /** Ends the span with the call's gRPC status. */
  end(code: number, codeName: string, details?: string): void;
}

/**
 * The SERVER span of one RPC, named `package.Service/Method`, child of the caller's span when it
 * sent a valid traceparent; undefined when tracing is off. Attributes follow the RPC semantic
 * conventions as the official grpc instrumentation sets them.
 */
export function startServerSpan(call: {
  service: string;
  method: string;
  peer: string;
  startTime: TimeInput;
  parent: CallTrace | undefined;
}): ServerSpan | undefined {
  const rt = runtime;
  if (!rt) return undefined;
  const span = rt.tracer.startSpan(
    `${call.service}/${call.method}`,
    {
      kind: rt.api.SpanKind.SERVER,
      startTime: call.startTime,
      attributes: { 'rpc.system': 'grpc', 'rpc.service': call.service, 'rpc.method': call.method, ...peerAttributes(call.peer) },
    },
    parentContext(rt, call.parent, true),
  );
  return {
    trace: callTraceOf(span),
    end(code, codeName, details) {
      span.setAttribute('rpc.grpc.status_code', code);
      if (SERVER_ERROR_CODES.has(code)) span.setStatus({ code: rt.api.SpanStatusCode.ERROR, message: details ? `${codeName}: ${details}` : codeName });
      span.end(spanClock());
    },
  };
}

export interface DatabaseSpan {
  /** The statement this call's work went in was sent, with `batchSize` calls' operations in it. */
  sent(batchSize: number): void;
  /** Ends the span; an error marks it failed (its message only). */
  end(error?: unknown): void;
}

/**
 * A CLIENT span for one call's database work under `parent` (the call's server span); undefined
 * when tracing is off or the call has no trace. db.system is postgresql for PGlite too: it is
 * PostgreSQL, embedded.
 */
export function startDatabaseSpan(parent: CallTrace | undefined, name: string, attributes: Attributes): DatabaseSpan | undefined {
  const rt = runtime;
  if (!rt || !parent) return undefined;
  const span = rt.tracer.startSpan(
    name,
    { kind: rt.api.SpanKind.CLIENT, startTime: spanClock(), attributes: { 'db.system': 'postgresql', 'db.system.name': 'postgresql', ...attributes } },
    parentContext(rt, parent, false),
  );
  let statements = 0;
  let lastBatch = 0;
  return {
    sent(batchSize) {
      statements += 1;
      lastBatch = batchSize;
      span.addEvent('statement sent', { 'taskbroker.batch.size': batchSize }, spanClock());
    },
    end(error) {
      // A batch serves many calls: each call's span names the size of the statement its work
      // went in (db.operation.batch.size only for a real batch, as the conventions ask: never 1),
      // and how many statements it took when a failed batch was run again in parts.
      if (lastBatch > 0) span.setAttribute('taskbroker.batch.size', lastBatch);
      if (lastBatch > 1) span.setAttribute('db.operation.batch.size', lastBatch);
      if (statements > 1) span.setAttribute('taskbroker.batch.statements', statements);
      if (error !== undefined) {
        span.setStatus({ code: rt.api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : 'failed' });
        if (error instanceof Error) span.setAttribute('error.type', error.name);
      }
      span.end(spanClock());
    },
  };
}

// ---- turning it on and off --------------------------------------------------------------------

export interface TracingDecision {
  enabled: boolean;
  /** Why, in words (logged at start). */
  reason: string;
}

const EXPORTERS = new Set(['otlp', 'console', 'zipkin', 'none']);
const PROTOCOLS = new Set(['grpc', 'http/protobuf', 'http/json']);

function listOf(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/**
 * Whether the environment asks for tracing: OTEL_SDK_DISABLED=true turns it off; otherwise
 * OTEL_TRACES_EXPORTER names the exporters (`none`: off), and without it an OTLP endpoint
 * (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT) turns on OTLP. Values the
 * SDK would only warn about (an unknown exporter or OTLP protocol) are refused here, so a typo
 * does not silently trace nothing.
 */
export function tracingDecision(env: NodeJS.ProcessEnv): TracingDecision {
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return { enabled: false, reason: 'OTEL_SDK_DISABLED is true' };
  const exporters = listOf(env.OTEL_TRACES_EXPORTER);
  const unknown = exporters.filter((e) => !EXPORTERS.has(e));
  if (unknown.length > 0) throw new Error(`OTEL_TRACES_EXPORTER: unknown exporter "${unknown[0]!.slice(0, 40)}" (otlp, console, zipkin or none)`);
  for (const name of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL'] as const) {
    const protocol = env[name]?.trim();
    if (protocol && !PROTOCOLS.has(protocol)) throw new Error(`${name}: unknown protocol "${protocol.slice(0, 40)}" (grpc, http/protobuf or http/json)`);
  }
  if (exporters.includes('none')) return { enabled: false, reason: 'OTEL_TRACES_EXPORTER is none' };
  if (exporters.length > 0) return { enabled: true, reason: `OTEL_TRACES_EXPORTER=${exporters.join(',')}` };
  const endpoint = ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_ENDPOINT'].find((k) => (env[k] ?? '').trim() !== '');
  if (endpoint) return { enabled: true, reason: `${endpoint} is set (OTLP)` };
  return { enabled: false, reason: 'no OTEL_TRACES_EXPORTER and no OTLP endpoint' };
}

/** One argument of a diagnostic, as text (never throws: the SDK passes what it likes, circular objects too). */
function describe(arg: unknown): string {
  if (arg instanceof Error) return arg.message;
  if (typeof arg === 'string') return arg;
  try {
    return JSON.stringify(arg) ?? typeof arg;
  } catch {
    return typeof arg;
  }
}

/** OpenTelemetry's own diagnostics (an export that failed, a dropped span) into the broker's log, bounded. */
function diagnosticsTo(api: Api, logger: Logger, env: NodeJS.ProcessEnv): void {
  const throttle = new LogThrottle(logger, { perInterval: 5, intervalMs: 60_000, maxKinds: 50 });
  const line =
    (level: 'info' | 'warn') =>
    (message: string, ...args: unknown[]) => {
      const detail = args.map(describe).join(' ');
      throttle.log(level, message.slice(0, 80), { otel: message, ...(detail ? { detail: detail.slice(0, 1000) } : {}) }, 'opentelemetry');
    };
  const level = (env.OTEL_LOG_LEVEL ?? '').trim().toUpperCase();
  // OTEL_LOG_LEVEL names a level (NONE, ERROR, WARN, INFO, DEBUG, VERBOSE, ALL); default WARN.
  const wanted = /^[A-Z]+$/.test(level) && level in api.DiagLogLevel ? api.DiagLogLevel[level as keyof typeof api.DiagLogLevel] : api.DiagLogLevel.WARN;
  api.diag.setLogger(
    { error: line('warn'), warn: line('warn'), info: line('info'), debug: line('info'), verbose: line('info') },
    { logLevel: wanted, suppressOverrideMessage: true },
  );
}

/** How long stopTracing() waits for the SDK by default, and the OTLP exporter's timeout unless the environment sets one. */
const DEFAULT_TRACING_SHUTDOWN_MS = 5_000;

/**
 * Starts tracing when the environment asks for it (tracingDecision): loads the SDK, starts NodeSDK
 * for traces only (no metrics, no logs: the broker serves its metrics on /metrics), and makes
 * every call traced from now on. Resolves with the decision; throws on an OTEL_* value it refuses.
 *
 * NodeSDK reads process.env (`env` is for the decision only, for tests). Unless the environment
 * sets OTEL_EXPORTER_OTLP_TRACES_TIMEOUT or OTEL_EXPORTER_OTLP_TIMEOUT, the OTLP exporter's
 * timeout becomes DEFAULT_TRACING_SHUTDOWN_MS (the SDK's default is 10 s): an export in flight holds the process
 * open until it times out, so this is what keeps a broker whose collector does not answer from
 * lingering past its shutdown bound.
 */
export async function startTracing(options: { logger: Logger; env?: NodeJS.ProcessEnv }): Promise<TracingDecision> {
  const env = options.env ?? process.env;
  const decision = tracingDecision(env);
  if (!decision.enabled || runtime) return decision;
  if (!process.env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT?.trim() && !process.env.OTEL_EXPORTER_OTLP_TIMEOUT?.trim()) {
    process.env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT = String(DEFAULT_TRACING_SHUTDOWN_MS);
  }
  const [api, { NodeSDK }] = await Promise.all([import('@opentelemetry/api'), import('@opentelemetry/sdk-node')]);
  sdkLoaded = true;
  const named = (env.OTEL_SERVICE_NAME ?? '').trim() !== '' || /(^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  const sdk = new NodeSDK({
    ...(named ? {} : { serviceName: TRACER_NAME }),
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [],
    // Parents are explicit: no context manager (async_hooks) and no global propagator.
    contextManager: null as unknown as undefined,
    textMapPropagator: null,
  });
  diagnosticsTo(api, options.logger, env);
  sdk.start();
  runtime = { api, tracer: api.trace.getTracer(TRACER_NAME), source: 'sdk', shutdown: () => sdk.shutdown() };
  return decision;
}

/**
 * Stops tracing: no new spans, and the SDK exports what it holds (flush and shutdown) within
 * DEFAULT_TRACING_SHUTDOWN_MS; what is left after that is dropped, so a collector that is down never holds up a
 * broker's exit.
 */
export async function stopTracing(logger: Logger): Promise<void> {
  const timeoutMs = DEFAULT_TRACING_SHUTDOWN_MS;
  const rt = runtime;
  runtime = undefined;
  if (!rt) return;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    const outcome = await Promise.race([rt.shutdown().then(() => 'done' as const), timedOut]);
    if (outcome === 'timeout') logger.warn({ timeoutMs }, 'tracing: spans not exported within the shutdown bound were dropped');
  } catch (err) {
    logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'tracing: the SDK did not shut down cleanly');
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Tests only: trace through `provider` (a BasicTracerProvider with an in-memory exporter) as if
 * tracing were on, without NodeSDK; stopTracing() turns it off again.
 */
export async function useTracerProviderForTests(provider: TracerProvider & { shutdown?(): Promise<void> }): Promise<void> {
  const api = await import('@opentelemetry/api');
  runtime = { api, tracer: provider.getTracer(TRACER_NAME), source: 'test', shutdown: () => provider.shutdown?.() ?? Promise.resolve() };
}
