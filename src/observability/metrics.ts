/**
 * Prometheus metrics of one broker, in a registry of its own (never prom-client's global one,
 * so several brokers in one process, as in tests, do not mix). Every name starts with
 * `task_broker_`, the default process metrics included.
 *
 * Labels carry only bounded, non-secret values: service and method names, gRPC status names,
 * verification reasons, task states, trust domain names. Never a token, key or task ID.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export const METRIC_PREFIX = 'task_broker_';

const RPC_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const AUDIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

type RpcLabels = 'service' | 'method' | 'code';

/** The broker's SVID as the metrics need it (a TlsIdentity fits). */
export interface SvidInfo {
  readonly notAfter: Date;
  /** When the certificate became valid; absent: age is not reported. */
  readonly notBefore?: Date;
}

/** A bundle set that announces changes per trust domain (TrustBundleSet fits). */
export interface ObservableBundles {
  trustDomains(): string[];
  onChange(listener: (trustDomain: string | undefined) => void): () => void;
}

/** A readiness verdict (a ReadinessReport fits). */
export interface ReadinessSnapshot {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, { readonly ok: boolean }>>;
}

export interface PoolStats {
  total: number;
  idle: number;
  waiting: number;
}

/** What the gRPC listener reports at each scrape (SvidServer fits). */
export interface ConnectionStats {
  readonly openConnections: number;
  readonly handshakesInProgress: number;
  readonly connectionCount: number;
}

/** How following the policy file has gone (a PolicySource's status() fits). */
export interface PolicyReloadStatus {
  readonly reloadFailures: number;
  readonly lastReloadFailedAt?: Date;
}

export interface BrokerMetricsOptions {
  /** Also collect prom-client's default process and Node.js metrics (prefixed too); default true. */
  defaultMetrics?: boolean;
  clock?: () => Date;
}

/** What a streaming SVID source reports: connected now, and when it last delivered. */
export interface SvidSourceStatus {
  connected: boolean;
  lastUpdate: Date | undefined;
}

/** A gauge read at scrape time; absent while `value` says undefined. */
function sampledGauge(registers: Registry[], name: string, help: string, value: () => number | undefined): Gauge {
  return new Gauge({
    name: `${METRIC_PREFIX}${name}`,
    help,
    registers,
    collect() {
      this.reset();
      const v = value();
      if (v !== undefined) this.set(v);
    },
  });
}

/** Label sets (service, method, code) whose metric children are kept for reuse. */
const MAX_RPC_LABEL_SETS = 1_000;

export class BrokerMetrics {
  readonly registry = new Registry();
  readonly rpcRequests: Counter<RpcLabels>;
  readonly rpcDuration: Histogram<RpcLabels>;
  readonly rpcInFlight: Gauge<'service' | 'method'>;
  readonly tokensIssued: Counter;
  readonly tokenVerifications: Counter<'reason'>;
  readonly tokensRevoked: Counter;
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
  readonly #inFlightChildren = new Map<string, { inc(): void; dec(): void }>();
  readonly #rpcChildren = new Map<string, { requests: { inc(): void }; duration: { observe(value: number): void } }>();
  #svid: () => SvidInfo | undefined = () => undefined;
  #pool: (() => PoolStats) | undefined;
  #readiness: (() => ReadinessSnapshot) | undefined;
  #source: (() => SvidSourceStatus | undefined) | undefined;
  #connections: (() => ConnectionStats) | undefined;
  #policy: (() => PolicyReloadStatus) | undefined;
  #writeFailures: (() => number) | undefined;
  readonly #bundleUpdated = new Map<string, Date>();

  constructor(options: BrokerMetricsOptions = {}) {
    this.#clock = options.clock ?? (() => new Date());
    const registers = [this.registry];
    const p = METRIC_PREFIX;
    this.rpcRequests = new Counter({
      name: `${p}grpc_requests_total`,
      help: 'gRPC calls handled, by service, method and status code (calls refused as UNAUTHENTICATED before any handler included)',
      labelNames: ['service', 'method', 'code'],
      registers,
    });
    this.rpcDuration = new Histogram({
      name: `${p}grpc_request_duration_seconds`,
      help: 'Time from the start of a gRPC call to its status, by service, method and status code',
      labelNames: ['service', 'method', 'code'],
      buckets: RPC_BUCKETS,
      registers,
    });
    this.rpcInFlight = new Gauge({
      name: `${p}grpc_requests_in_flight`,
      help: 'gRPC calls being handled now',
      labelNames: ['service', 'method'],
      registers,
    });
    this.tokensIssued = new Counter({ name: `${p}tokens_issued_total`, help: 'Task tokens issued', registers });
    this.tokenVerifications = new Counter({
      name: `${p}token_verifications_total`,
      help: 'VerifyToken answers, by reason (valid, expired, revoked, binding-mismatch, ...)',
      labelNames: ['reason'],
      registers,
    });
    this.tokensRevoked = new Counter({ name: `${p}tokens_revoked_total`, help: 'Tokens revoked because their task ended', registers });
    this.tasksEnded = new Counter({
      name: `${p}tasks_ended_total`,
      help: 'Tasks that reached a final state (COMPLETED, CANCELLED, REVOKED, EXPIRED), counted once their transaction committed',
      labelNames: ['state'],
      registers,
    });
    this.auditWriteDuration = new Histogram({
      name: `${p}audit_write_duration_seconds`,
      help: 'Time to append one audit event to its hash chain (inside the transaction of the change)',
      buckets: AUDIT_BUCKETS,
      registers,
    });

    this.writeBatchOperations = new Histogram({
      name: `${p}db_write_batch_operations`,
      help: 'Operations (calls) committed together in one write statement (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 100],
      registers,
    });
    this.writeBatchDuration = new Histogram({
      name: `${p}db_write_batch_duration_seconds`,
      help: 'Time from sending a write batch to its commit',
      buckets: AUDIT_BUCKETS,
      registers,
    });

    this.callsShed = new Counter({
      name: `${p}calls_shed_total`,
      help: 'Calls refused before any work by admission control, by reason (caller-in-flight, caller-rate: RESOURCE_EXHAUSTED; broker-in-flight, database-queue: UNAVAILABLE)',
      labelNames: ['reason'],
      registers,
    });

    this.connectionsAccepted = new Counter({
      name: `${p}connections_accepted_total`,
      help: 'gRPC connections that completed their TLS handshake with ALPN h2 (before the SVID check)',
      registers,
    });
    this.connectionsRefused = new Counter({
      name: `${p}connections_refused_total`,
      help: 'gRPC connections closed by the broker on accept or after the handshake, by reason (max-connections, max-handshakes, no-h2, draining, not-an-svid)',
      labelNames: ['reason'],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: `${p}tls_handshake_failures_total`,
      help: 'TLS handshakes that failed or did not finish in time (the connection is closed), by reason (timeout, tls-error)',
      labelNames: ['reason'],
      registers,
    });
    const connectionsNow = () => this.#connections?.();
    sampledGauge(registers, 'connections_open', 'TCP connections open on the gRPC port (in their TLS handshake or past it)', () => connectionsNow()?.openConnections);
    sampledGauge(registers, 'connections_handshaking', 'Connections still in their TLS handshake (not authenticated yet)', () => connectionsNow()?.handshakesInProgress);
    sampledGauge(registers, 'connections_established', 'Connections past their TLS handshake', () => connectionsNow()?.connectionCount);
    const policyNow = () => this.#policy?.();
    new Counter({
      name: `${p}policy_reload_failures_total`,
      help: 'Policy file changes refused because the new version was broken or unreadable (the last good policy stayed in force)',
      registers,
      collect() {
        this.reset();
        this.inc(policyNow()?.reloadFailures ?? 0);
      },
    });
    new Gauge({
      name: `${p}policy_last_reload_failure_timestamp_seconds`,
      help: 'When a policy reload last failed (Unix time); absent when none has',
      registers,
      collect() {
        this.reset();
        const at = policyNow()?.lastReloadFailedAt;
        if (at) this.set(at.getTime() / 1000);
      },
    });
    sampledGauge(
      registers,
      'db_consecutive_write_failures',
      'Write transactions that failed in a row for a database reason (unreachable, timeout, privilege); 0 after any success',
      () => this.#writeFailures?.(),
    );

    // collect() runs with the gauge as `this`; these read the broker's state at scrape time.
    const svidNow = () => this.#svid();
    const nowMs = () => this.#clock().getTime();
    const bundleTimes = () => this.#bundleUpdated;
    const poolNow = () => this.#pool?.();
    const readinessNow = () => this.#readiness?.();
    this.ready = new Gauge({
      name: `${p}ready`,
      help: '1 when the broker is ready to serve (every readiness check passed at the last evaluation, not shutting down), else 0',
      registers,
      collect() {
        this.set(readinessNow()?.ready ? 1 : 0);
      },
    });
    this.readinessCheck = new Gauge({
      name: `${p}readiness_check`,
      help: '1 when the readiness check passed at its last evaluation, else 0',
      labelNames: ['check'],
      registers,
      collect() {
        this.reset();
        for (const [check, r] of Object.entries(readinessNow()?.checks ?? {})) this.set({ check }, r.ok ? 1 : 0);
      },
    });
    new Gauge({
      name: `${p}svid_expiry_timestamp_seconds`,
      help: "When the broker's own X509-SVID expires (Unix time)",
      registers,
      collect() {
        this.reset();
        const current = svidNow();
        if (current) this.set(current.notAfter.getTime() / 1000);
      },
    });
    new Gauge({
      name: `${p}svid_age_seconds`,
      help: "Seconds since the broker's current X509-SVID became valid (notBefore); grows until rotation",
      registers,
      collect() {
        this.reset();
        const current = svidNow();
        if (current?.notBefore) this.set((nowMs() - current.notBefore.getTime()) / 1000);
      },
    });
    new Gauge({
      name: `${p}svid_remaining_seconds`,
      help: "Seconds until the broker's own X509-SVID expires (negative once expired)",
      registers,
      collect() {
        this.reset();
        const current = svidNow();
        if (current) this.set((current.notAfter.getTime() - nowMs()) / 1000);
      },
    });
    new Gauge({
      name: `${p}trust_bundle_age_seconds`,
      help: 'Seconds since the trust bundle of each trust domain last changed (or since the broker started, for bundles it started with)',
      labelNames: ['trust_domain'],
      registers,
      collect() {
        this.reset();
        const now = nowMs();
        for (const [trustDomain, at] of bundleTimes()) this.set({ trust_domain: trustDomain }, (now - at.getTime()) / 1000);
      },
    });
    const sourceNow = () => this.#source?.();
    new Gauge({
      name: `${p}svid_source_connected`,
      help: 'Whether the stream that delivers the SVID (the Workload API) is connected: 1 or 0; absent for file-based SVIDs',
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        const status = sourceNow();
        if (status) this.set({ source: 'workload_api' }, status.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: `${p}svid_source_last_update_age_seconds`,
      help: 'Seconds since the SVID source last delivered an update; grows while the SPIRE agent is away',
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        const at = sourceNow()?.lastUpdate;
        if (at) this.set({ source: 'workload_api' }, (nowMs() - at.getTime()) / 1000);
      },
    });
    sampledGauge(registers, 'db_pool_connections', 'Database connections open (in use and idle)', () => poolNow()?.total);
    sampledGauge(registers, 'db_pool_idle_connections', 'Database connections open and idle', () => poolNow()?.idle);
    sampledGauge(registers, 'db_pool_waiting_requests', 'Queries waiting for a database connection', () => poolNow()?.waiting);

    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: p });
  }

  /** One finished gRPC call. */
  /** The in-flight gauge of one method (its labelled child, looked up once). */
  inFlightOf(service: string, method: string): { inc(): void; dec(): void } {
    const key = `${service}/${method}`;
    let child = this.#inFlightChildren.get(key);
    if (!child) {
      child = this.rpcInFlight.labels({ service, method });
      if (this.#inFlightChildren.size < MAX_RPC_LABEL_SETS) this.#inFlightChildren.set(key, child);
    }
    return child;
  }

  observeRpc(service: string, method: string, code: string, seconds: number): void {
    const key = `${service}/${method}/${code}`;
    let children = this.#rpcChildren.get(key);
    if (!children) {
      // prom-client hashes the label set on every call; the labelled children are looked up once.
      children = { requests: this.rpcRequests.labels({ service, method, code }), duration: this.rpcDuration.labels({ service, method, code }) };
      if (this.#rpcChildren.size < MAX_RPC_LABEL_SETS) this.#rpcChildren.set(key, children);
    }
    children.requests.inc();
    children.duration.observe(seconds);
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
