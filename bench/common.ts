/**
 * What the bench's processes share: the identities of the bench trust domain, the messages the
 * orchestrator (run.ts) exchanges with the load generators (load.ts) and the servers it forks
 * (echo-server.ts, oidc-server.ts), and the scenarios.
 */
import { createHash, X509Certificate } from 'node:crypto';

export const TRUST_DOMAIN = 'bench.test';
export const BROKER_ID = `spiffe://${TRUST_DOMAIN}/task-broker`;
/** Connection i of the load presents worker i (task owner, OAuth client) and, to verify, api i (resource server, token audience). */
export const workerId = (i: number) => `spiffe://${TRUST_DOMAIN}/ns/workers/sa/w${i}`;
export const apiId = (i: number) => `spiffe://${TRUST_DOMAIN}/ns/apis/sa/a${i}`;
/** oidc-provider client IDs: worker i gets JWT access tokens, worker i "-opaque" opaque ones (to introspect), api i introspects. */
export const oidcWorkerClient = (i: number) => `worker-${i}`;
export const oidcOpaqueClient = (i: number) => `worker-${i}-opaque`;
export const oidcApiClient = (i: number) => `api-${i}`;
export const SCOPES = ['invoices:read', 'invoices:export'];
/** Lifetime of every access token: the broker's default token ttl (5 min). */
export const TOKEN_TTL_SECONDS = 300;

/** The broker denies everything without a policy; this one allows the bench's workers what they do, and nothing else. */
export const BENCH_POLICY = `
version: 1
rules:
  - name: bench
    callers:
      spiffe_ids: ["spiffe://${TRUST_DOMAIN}/ns/workers/**"]
    actions: ["invoice.export"]
    audiences: ["spiffe://${TRUST_DOMAIN}/ns/apis/**"]
    scopes: ${JSON.stringify(SCOPES)}
`;

/** RFC 8705 x5t#S256 of a PEM certificate (the first one of a chain). */
export function thumbprintOfPem(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
}

export interface SvidFiles {
  spiffeId: string;
  certPath: string;
  keyPath: string;
}

/** One connection of a load generator: the worker and the API identity it presents (PEM files from dev-ca). */
export interface ConnectionSpec {
  index: number;
  worker: SvidFiles;
  api: SvidFiles;
}

/** The echo server's one method (raw bytes in, the same bytes out). */
export const ECHO_PATH = '/bench.Echo/Echo';

export type TargetKind = 'echo' | 'broker' | 'oidc';

export interface TargetSpec {
  kind: TargetKind;
  /** 127.0.0.1:PORT */
  address: string;
  /** The trust bundle (CA certificate) of the bench trust domain. */
  bundlePath: string;
}

/** What a load generator does in one call (one "op"). */
export type CallKind = 'echo' | 'oidc-token' | 'oidc-token-opaque' | 'oidc-introspect' | 'create' | 'issue' | 'verify' | 'flow';

export interface RunPlan {
  call: CallKind;
  /** Closed: `inflight` loops, each sends its next call when its last one ended. Open: a fixed arrival schedule. */
  mode: 'closed' | 'open';
  /** Calls in flight in this generator (closed loop). */
  inflight: number;
  /** Open loop: calls per second from this generator, and the offset of its schedule (ns) so generators interleave. */
  ratePerSec?: number;
  offsetNs?: number;
  /** process.hrtime.bigint() values (CLOCK_MONOTONIC, the same in every process of the machine), as decimal strings. */
  startNs: string;
  measureStartNs: string;
  measureEndNs: string;
}

export type ToLoad =
  | {
      type: 'connect';
      target: TargetSpec;
      connections: ConnectionSpec[];
      generator: number;
      /** Connections of all generators together. */ totalConnections: number;
    }
  | { type: 'prepare'; call: CallKind; inflight: number }
  | { type: 'run'; plan: RunPlan }
  | { type: 'close' };

export interface LoadResult {
  /** Calls that completed successfully inside the measurement window. */
  ok: number;
  /** Failed calls inside the window, by gRPC status or HTTP status. */
  errors: Record<string, number>;
  /** One failure's message, for the report. */
  firstError?: string;
  /** Latency histogram (µs) of the successful calls in the window, hdr-histogram-js compressed base64. */
  histogram: string;
  /** Exact largest latency in the window (µs). */
  maxUs: number;
  /** Successful calls that ended in each second of the window (the last one may be partial). */
  perSecond: number[];
  /** Flow: broker calls (steps of flows) that ended successfully inside the window, whether or not their flow did. */
  flowCalls: number;
  /** Open loop: calls scheduled in the window, and the most calls in flight at once. */
  scheduled: number;
  maxInflight: number;
  /** Open loop: how far behind its schedule the generator itself was at worst when sending (ms). */
  maxSendLagMs: number;
}

export type FromLoad =
  { type: 'connected' } | { type: 'prepared'; detail?: string } | { type: 'result'; result: LoadResult } | { type: 'failed'; message: string };

/** Messages of the forked servers (echo, oidc-provider). */
export type ServerConfig =
  | { kind: 'echo'; certPath: string; keyPath: string; bundlePath: string }
  | { kind: 'oidc'; certPath: string; keyPath: string; bundlePath: string; identities: number };

export type FromServer = { type: 'listening'; port: number } | { type: 'failed'; message: string };

/** Sends a message over the IPC channel of a forked process. */
export function send(message: unknown): void {
  if (!process.send) throw new Error('not forked with an IPC channel');
  process.send(message);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Latency histograms of the generators and the merge in the parent: the same bounds, or they cannot be added. */
export const HISTOGRAM_OPTIONS = { lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 } as const;

export const now = () => process.hrtime.bigint();

/**
 * Resolves at `t`: a timer until about a millisecond before, then the event loop's turns (I/O
 * goes on meanwhile). Timers alone would be up to a millisecond late, and in the open loop that
 * lateness would count as the server's latency.
 */
export async function sleepUntil(t: bigint): Promise<void> {
  for (;;) {
    const leftMs = Number(t - now()) / 1e6;
    if (leftMs <= 0) return;
    if (leftMs > 1.2) await new Promise((r) => setTimeout(r, Math.min(50, Math.floor(leftMs - 1))));
    else await new Promise((r) => setImmediate(r));
  }
}
