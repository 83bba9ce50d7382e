/**
 * Prometheus metrics of one broker, in a registry of its own (never prom-client's global one,
 * so several brokers in one process, as in tests, do not mix). The broker's own metrics start
 * with `task_broker_`; three families keep the names stock dashboards and alerts expect:
 * - gRPC server metrics as go-grpc-prometheus names them (`grpc_server_started_total`,
 *   `grpc_server_handled_total`, `grpc_server_handling_seconds`, labels `grpc_service`,
 *   `grpc_method`, `grpc_type`, `grpc_code` with codes spelled `OK`, `NotFound`, ...);
 * - prom-client's default process and Node.js metrics, unprefixed (`process_*`, `nodejs_*`).
 *
 * Labels carry only bounded, non-secret values: service and method names, gRPC status names,
 * verification reasons, task states, trust domain names. Never a token, key or task ID.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { METRIC_PREFIX, metricsIn } from './metric-factory.js';
import type { ConnectionStats, ObservableBundles, PolicyReloadStatus, PoolStats, ReadinessSnapshot, SvidInfo, SvidSourceStatus } from './metric-inputs.js';

const RPC_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const AUDIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

type RpcLabels = 'grpc_service' | 'grpc_method' | 'grpc_type';
type HandledLabels = RpcLabels | 'grpc_code';

/** How a method streams, as go-grpc-prometheus's `grpc_type` label says it. */
export type GrpcType = 'unary' | 'client_stream' | 'server_stream' | 'bidi_stream';

/** go-grpc-prometheus spells codes as Go's codes.Code.String() does. */
const GO_CODE_NAMES: Record<number, string> = {
  0: 'OK',
  1: 'Canceled',
  2: 'Unknown',
  3: 'InvalidArgument',
  4: 'DeadlineExceeded',
  5: 'NotFound',
  6: 'AlreadyExists',
  7: 'PermissionDenied',
  8: 'ResourceExhausted',
  9: 'FailedPrecondition',
  10: 'Aborted',
  11: 'OutOfRange',
  12: 'Unimplemented',
  13: 'Internal',
  14: 'Unavailable',
  15: 'DataLoss',
  16: 'Unauthenticated',
};

/** The `grpc_code` label of a status code. */
function grpcCodeLabel(code: number): string {
  return GO_CODE_NAMES[code] ?? `Code(${code})`;
}

export interface BrokerMetricsOptions {
  /** Also collect prom-client's default process and Node.js metrics (unprefixed); default true. */
  defaultMetrics?: boolean;
  clock?: () => Date;
}

const unixSeconds = (at: Date | undefined) => (at ? at.getTime() / 1000 : undefined);

/** One method's labelled gRPC metric children; `handled` by status code (at most 17 per method). */
export interface MethodMetrics {
  readonly inFlight: { inc(): void; dec(): void };
  readonly started: { inc(): void };
  readonly duration: { observe(seconds: number): void };
  handled(code: number): { inc(): void };
}

export class BrokerMetrics {
  readonly registry = new Registry();
  readonly #rpcStarted: Counter<RpcLabels>;
  readonly #rpcHandled: Counter<HandledLabels>;
  readonly #rpcDuration: Histogram<RpcLabels>;
  readonly rpcInFlight: Gauge<'service' | 'method'>;
  readonly tokensIssued: Counter;
  readonly tokenVerifications: Counter<'reason'>;
  readonly tokensRevoked: Counter;
  readonly revocationsDispatched: Counter;
  readonly tokenUsesReported: Counter<'result'>;
  readonly tasksEnded: Counter<'state'>;
  readonly auditWriteDuration: Histogram;
  readonly writeBatchOperations: Histogram;
  readonly writeBatchDuration: Histogram;
  readonly callsShed: Counter<'reason'>;
  readonly connectionsAccepted: Counter;
  readonly connectionsRefused: Counter<'reason'>;
  readonly handshakeFailures: Counter<'reason'>;
  readonly ready: Gauge;
  readonly readinessCheck: Gauge<'check'>;
  readonly #clock: () => Date;
  #svid: () => SvidInfo | undefined = () => undefined;
  #pool: (() => PoolStats) | undefined;
  #readiness: (() => ReadinessSnapshot) | undefined;
  #source: (() => SvidSourceStatus | undefined) | undefined;
  #connections: (() => ConnectionStats) | undefined;
  #policy: (() => PolicyReloadStatus) | undefined;
  #writeFailures: (() => number) | undefined;
  #revocationFeed: (() => { streams: number; lastReadAt: Date | undefined }) | undefined;
  readonly #bundleUpdated = new Map<string, Date>();

  constructor(options: BrokerMetricsOptions = {}) {
    this.#clock = options.clock ?? (() => new Date());
    const { counter, histogram, gauge, gaugePerLabel } = metricsIn(this.registry);
    const rpcLabels: RpcLabels[] = ['grpc_service', 'grpc_method', 'grpc_type'];
    const registers = [this.registry];
    this.#rpcStarted = new Counter({
      name: 'grpc_server_started_total',
      help: 'gRPC calls started on the server, by service, method and type',
      labelNames: rpcLabels,
      registers,
    });
    this.#rpcHandled = new Counter({
      name: 'grpc_server_handled_total',
      help: 'gRPC calls completed on the server, by service, method, type and status code (calls refused as Unauthenticated before any handler included)',
      labelNames: [...rpcLabels, 'grpc_code'],
      registers,
    });
    this.#rpcDuration = new Histogram({
      name: 'grpc_server_handling_seconds',
      help: 'Time from the start of a gRPC call to its status, by service, method and type',
      labelNames: rpcLabels,
      buckets: RPC_BUCKETS,
      registers,
    });
    this.rpcInFlight = new Gauge({
      name: `${METRIC_PREFIX}grpc_requests_in_flight`,
      help: 'gRPC calls being handled now',
      labelNames: ['service', 'method'],
      registers: [this.registry],
    });
    this.tokensIssued = counter('tokens_issued_total', 'Task tokens issued');
    this.tokenVerifications = counter('token_verifications_total', 'VerifyToken answers, by reason (valid, expired, revoked, binding-mismatch, ...)', [
      'reason',
    ]);
    this.tokensRevoked = counter('tokens_revoked_total', 'Tokens revoked because their task ended');
    this.revocationsDispatched = counter('revocations_dispatched_total', 'Revocation log entries this replica read and passed to its WatchRevocations streams');
    this.tokenUsesReported = counter('token_uses_reported_total', 'Offline verifications reported by resource servers (ReportTokenUse), by result', ['result']);
    gauge('revocation_streams', 'WatchRevocations streams open on this replica', () => this.#revocationFeed?.().streams);
    gauge(
      'revocation_log_read_age_seconds',
      'Seconds since this replica last read the revocation log; grows while it cannot (its streams get no heartbeats then)',
      () => {
        const at = this.#revocationFeed?.().lastReadAt;
        return at === undefined ? undefined : Math.max(0, (this.#clock().getTime() - at.getTime()) / 1000);
      },
    );
    this.tasksEnded = counter(
      'tasks_ended_total',
      'Tasks that reached a final state (COMPLETED, CANCELLED, REVOKED, EXPIRED), counted once their transaction committed',
      ['state'],
    );
    this.auditWriteDuration = histogram(
      'audit_write_duration_seconds',
      'Time to append one audit event to its hash chain (inside the transaction of the change)',
      AUDIT_BUCKETS,
    );

    this.writeBatchOperations = histogram(
      'db_write_batch_operations',
      'Operations (calls) committed together in one write statement (group commit)',
      [1, 2, 4, 8, 16, 32, 64, 100],
    );
    this.writeBatchDuration = histogram('db_write_batch_duration_seconds', 'Time from sending a write batch to its commit', AUDIT_BUCKETS);

    this.callsShed = counter(
      'calls_shed_total',
      'Calls refused before any work by admission control, by reason (caller-in-flight, caller-rate: RESOURCE_EXHAUSTED; broker-in-flight, database-queue: UNAVAILABLE)',
      ['reason'],
    );

    this.connectionsAccepted = counter(
      'connections_accepted_total',
      'gRPC connections that completed their TLS handshake with ALPN h2 (before the SVID check)',
    );
    this.connectionsRefused = counter(
      'connections_refused_total',
      'gRPC connections closed by the broker on accept or after the handshake, by reason (max-connections, max-handshakes, no-h2, draining, not-an-svid)',
      ['reason'],
    );
    this.handshakeFailures = counter(
      'tls_handshake_failures_total',
      'TLS handshakes that failed or did not finish in time (the connection is closed), by reason (timeout, tls-error)',
      ['reason'],
    );
    const connectionsNow = () => this.#connections?.();
    gauge('connections_open', 'TCP connections open on the gRPC port (in their TLS handshake or past it)', () => connectionsNow()?.openConnections);
    gauge('connections_handshaking', 'Connections still in their TLS handshake (not authenticated yet)', () => connectionsNow()?.handshakesInProgress);
    gauge('connections_established', 'Connections past their TLS handshake', () => connectionsNow()?.connectionCount);
    const policyNow = () => this.#policy?.();
    new Counter({
      name: `${METRIC_PREFIX}policy_reload_failures_total`,
      help: 'Policy file changes refused because the new version was broken or unreadable (the last good policy stayed in force)',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(policyNow()?.reloadFailures ?? 0);
      },
    });
    gauge('policy_last_reload_failure_timestamp_seconds', 'When a policy reload last failed (Unix time); absent when none has', () =>
      unixSeconds(policyNow()?.lastReloadFailedAt),
    );
    gauge(
      'db_consecutive_write_failures',
      'Write transactions that failed in a row for a database reason (unreachable, timeout, privilege); 0 after any success',
      () => this.#writeFailures?.(),
    );

    const svidNow = () => this.#svid();
    const nowMs = () => this.#clock().getTime();
    const secondsSince = (at: Date | undefined) => (at ? (nowMs() - at.getTime()) / 1000 : undefined);
    const poolNow = () => this.#pool?.();
    const readinessNow = () => this.#readiness?.();
    this.ready = gauge('ready', '1 when the broker is ready to serve (every readiness check passed at the last evaluation, not shutting down), else 0', () =>
      readinessNow()?.ready ? 1 : 0,
    );
    this.readinessCheck = gaugePerLabel('readiness_check', '1 when the readiness check passed at its last evaluation, else 0', 'check', () =>
      Object.entries(readinessNow()?.checks ?? {}).map(([check, r]) => [check, r.ok ? 1 : 0] as const),
    );
    gauge('svid_expiry_timestamp_seconds', "When the broker's own X509-SVID expires (Unix time)", () => unixSeconds(svidNow()?.notAfter));
    gauge('svid_age_seconds', "Seconds since the broker's current X509-SVID became valid (notBefore); grows until rotation", () =>
      secondsSince(svidNow()?.notBefore),
    );
    gauge('svid_remaining_seconds', "Seconds until the broker's own X509-SVID expires (negative once expired)", () => {
      const current = svidNow();
      return current ? (current.notAfter.getTime() - nowMs()) / 1000 : undefined;
    });
    gaugePerLabel(
      'trust_bundle_age_seconds',
      'Seconds since the trust bundle of each trust domain last changed (or since the broker started, for bundles it started with)',
      'trust_domain',
      () => {
        const now = nowMs();
        return [...this.#bundleUpdated].map(([trustDomain, at]) => [trustDomain, (now - at.getTime()) / 1000] as const);
      },
    );
    const sourceNow = () => this.#source?.();
    const workloadApi = { source: 'workload_api' };
    gauge(
      'svid_source_connected',
      'Whether the stream that delivers the SVID (the Workload API) is connected: 1 or 0; absent for file-based SVIDs',
      () => {
        const status = sourceNow();
        return status ? (status.connected ? 1 : 0) : undefined;
      },
      workloadApi,
    );
    gauge(
      'svid_source_last_update_age_seconds',
      'Seconds since the SVID source last delivered an update; grows while the SPIRE agent is away',
      () => secondsSince(sourceNow()?.lastUpdate),
      workloadApi,
    );
    gauge('db_pool_connections', 'Database connections open (in use and idle)', () => poolNow()?.total);
    gauge('db_pool_idle_connections', 'Database connections open and idle', () => poolNow()?.idle);
    gauge('db_pool_waiting_requests', 'Queries waiting for a database connection', () => poolNow()?.waiting);
    gauge('db_pool_max_connections', 'The most database connections the pool opens (--db-pool-max; 1 for the embedded PGlite)', () => poolNow()?.max);

    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * The labelled children of one method's gRPC metrics (prom-client hashes the label set on every
   * call otherwise): what a call records at its start and end. The caller keeps them per method.
   */
  methodMetrics(service: string, method: string, type: GrpcType): MethodMetrics {
    const labels = { grpc_service: service, grpc_method: method, grpc_type: type };
    // By status code (0..16), each child made on the code's first use.
    const handled: { inc(): void }[] = [];
    return {
      inFlight: this.rpcInFlight.labels({ service, method }),
      started: this.#rpcStarted.labels(labels),
      duration: this.#rpcDuration.labels(labels),
      handled: (code) => (handled[code] ??= this.#rpcHandled.labels({ ...labels, grpc_code: grpcCodeLabel(code) })),
    };
  }

  /** Reports the SVID `current()` returns at each scrape. */
  watchSvid(current: () => SvidInfo | undefined): void {
    this.#svid = current;
  }

  /** Reports the readiness verdict and each check's outcome at each scrape. */
  watchReadiness(report: () => ReadinessSnapshot): void {
    this.#readiness = report;
  }

  /** Reports the state of a streaming SVID source (the Workload API) at each scrape. */
  watchSvidSource(status: () => SvidSourceStatus | undefined): void {
    this.#source = status;
  }

  /** Reports the gRPC listener's connections at each scrape. */
  watchConnections(stats: () => ConnectionStats): void {
    this.#connections = stats;
  }

  /** Reports policy reload failures at each scrape. */
  watchPolicy(status: () => PolicyReloadStatus): void {
    this.#policy = status;
  }

  /** Reports the revocation feed at each scrape: open streams, and when the log was last read. */
  watchRevocationFeed(feed: () => { streams: number; lastReadAt: Date | undefined }): void {
    this.#revocationFeed = feed;
  }

  /** Reports the current run of failed write transactions at each scrape. */
  watchWriteFailures(consecutive: () => number): void {
    this.#writeFailures = consecutive;
  }

  /** Reports database pool use at each scrape. */
  watchPool(stats: () => PoolStats): void {
    this.#pool = stats;
  }

  /**
   * Follows bundle changes per trust domain; returns the unsubscribe function. Bundles present
   * now count as updated now: when they were loaded before the broker started is not known.
   */
  watchBundles(bundles: ObservableBundles, has: (trustDomain: string) => boolean): () => void {
    const now = () => this.#clock();
    for (const td of bundles.trustDomains()) this.#bundleUpdated.set(td, now());
    return bundles.onChange((trustDomain) => {
      if (trustDomain === undefined) {
        const present = new Set(bundles.trustDomains());
        for (const td of [...this.#bundleUpdated.keys()]) if (!present.has(td)) this.#bundleUpdated.delete(td);
        for (const td of present) this.#bundleUpdated.set(td, now());
        return;
      }
      if (has(trustDomain)) this.#bundleUpdated.set(trustDomain, now());
      else this.#bundleUpdated.delete(trustDomain);
    });
  }

  /** The text exposition of every metric. */
  async expose(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
