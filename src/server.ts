/**
 * The composition root: the one place that wires concrete parts into a running broker.
 *
 * startBroker: the gRPC side (SVID-verifying TLS server, services, health, reflection).
 * startTaskBroker: the whole broker: storage, signing keys, lifecycle, gRPC, the HTTP port
 * with the JWKS, /healthz, /readyz and /metrics, readiness driving the gRPC health statuses,
 * and the expiry sweeper.
 */
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { randomUUID } from 'node:crypto';
import { brokerPackageDefinition, brokerProto } from './protocol/proto.js';
import { adminHandlers } from './api/admin-service.js';
import { taskBrokerHandlers } from './api/task-broker-service.js';
import { CallAdmission, type AdmissionLimits } from './api/admission.js';
import { callRecorder } from './api/call-record.js';
import { RequestDecoders } from './api/request-decoding.js';
import { StaticPolicySource, type PolicySource } from './policy/policy-source.js';
import { TaskAdmin } from './tasks/admin.js';
import { OpsHttpServer } from './http/ops-server.js';
import { healthzRoute, JWKS_PATH, jwksRoute, METRICS_PATH, metricsRoute, readyzRoute } from './http/ops-routes.js';
import type { Logger } from './observability/logger.js';
import { BrokerMetrics, isObservableBundles } from './observability/metrics.js';
import { Readiness, type ReadinessCheck } from './observability/readiness.js';
import { fileDescriptorsCheck, writesCheck } from './observability/capacity-checks.js';
import { databaseCheck, migrationsCheck, policyCheck, svidCheck } from './observability/readiness-checks.js';
import { parsePemCertificates } from './spiffe/certificate.js';
import type { X509BundleSource } from './spiffe/bundle.js';
import type { Store } from './store/database.js';
import { migrate, migrationStatus } from './store/migrate.js';
import { TaskLifecycle, type LifecycleLimits } from './tasks/lifecycle.js';
import type { KeyEncryptionKey } from './tokens/kek.js';
import { SigningKeyRing, type TokenAlg } from './tokens/keyring.js';
import type { TlsIdentity, X509SvidSource } from './spiffe/x509-source.js';
import { DEFAULT_MAX_MESSAGE_BYTES, SvidServer, type ConnectionLimits } from './transport/svid-server.js';

export interface BrokerDeps {
  logger: Logger;
  identity: X509SvidSource;
  bundles: X509BundleSource;
  host: string;
  port: number;
  clock?: () => Date;
  refusedConnectionLingerMs?: number;
  lifecycle?: TaskLifecycle;
  admin?: TaskAdmin;
  /** Counts and times every call; absent: no metrics. */
  metrics?: BrokerMetrics;
  /**
   * Drives the gRPC health statuses: SERVING while ready, NOT_SERVING otherwise. Absent: every
   * service is SERVING from the moment the broker listens until close().
   */
  readiness?: Readiness;
  /** Per-caller and broker-wide limits on calls in flight (defaults: DEFAULT_ADMISSION_LIMITS). */
  admission?: Partial<AdmissionLimits>;
  /** Requests waiting for a database connection now: calls are shed before this queue grows without bound. */
  databaseQueue?: () => number;
  /** Largest request message accepted (bytes); default 1 MiB. */
  maxMessageBytes?: number;
  /** Bounds on connections and handshakes (defaults: DEFAULT_CONNECTION_LIMITS). */
  connectionLimits?: Partial<ConnectionLimits>;
}

export interface RunningBroker {
  readonly port: number;
  readonly server: SvidServer;
  readonly health: HealthImplementation;
  /** The names health answers for: '' (the whole server) and each service. */
  readonly healthServices: readonly string[];
  close(graceMs?: number): Promise<void>;
}

export const SERVICE_NAMES = ['taskbroker.v1.TaskBroker', 'taskbroker.v1.TaskBrokerAdmin'] as const;

export async function startBroker(deps: BrokerDeps): Promise<RunningBroker> {
  const { metrics, readiness } = deps;
  const admission = new CallAdmission({ limits: deps.admission, metrics, databaseQueue: deps.databaseQueue, services: SERVICE_NAMES });
  const decoders = new RequestDecoders();
  const maxMessageBytes = deps.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const server = new SvidServer({
    bundles: deps.bundles,
    identity: deps.identity,
    logger: deps.logger,
    clock: deps.clock,
    refusedConnectionLingerMs: deps.refusedConnectionLingerMs,
    limits: deps.connectionLimits,
    observer: metrics
      ? {
          connectionAccepted: () => metrics.connectionsAccepted.inc(),
          connectionRefused: (reason) => metrics.connectionsRefused.inc({ reason }),
          handshakeFailed: (reason) => metrics.handshakeFailures.inc({ reason }),
        }
      : undefined,
    grpcOptions: { 'grpc.max_receive_message_length': maxMessageBytes },
    // Every call is recorded, refused ones included; then authenticated, admitted, decoded.
    outerInterceptors: [callRecorder({ logger: deps.logger, metrics, maxMessageBytes })],
    interceptors: [admission.interceptor(), decoders.interceptor()],
  });
  const proto = brokerProto();
  server.grpc.addService(decoders.undecoded(proto.taskbroker.v1.TaskBroker.service), taskBrokerHandlers({ logger: deps.logger, lifecycle: deps.lifecycle as TaskLifecycle, metrics }));
  if (deps.admin) server.grpc.addService(decoders.undecoded(proto.taskbroker.v1.TaskBrokerAdmin.service), adminHandlers({ logger: deps.logger, admin: deps.admin }));
  const served = SERVICE_NAMES.filter((name) => name !== 'taskbroker.v1.TaskBrokerAdmin' || deps.admin);
  const healthServices = ['', ...served];

  const health = new HealthImplementation(Object.fromEntries(healthServices.map((s) => [s, 'NOT_SERVING'])));
  health.addToServer(server.grpc);
  // Reflection describes every service served here, health included.
  new ReflectionService({ ...brokerPackageDefinition(), ...loadSync(healthProtoPath) }).addToServer(server.grpc);
  const setHealth = (serving: boolean) => {
    for (const name of healthServices) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
  };

  const port = await server.listen(deps.host, deps.port);
  let unfollow = () => undefined as void;
  if (readiness) {
    setHealth(readiness.ready);
    unfollow = readiness.onChange((report) => setHealth(report.ready));
  } else {
    setHealth(true);
  }
  deps.logger.info({ host: deps.host, port, spiffeId: deps.identity.current()?.spiffeId.toString() }, 'task-broker listening');

  return {
    port,
    server,
    health,
    healthServices,
    async close(graceMs = 10_000) {
      unfollow();
      setHealth(false);
      await server.shutdown(graceMs);
      admission.close();
    },
  };
}

export interface TaskBrokerOptions {
  logger: Logger;
  identity: X509SvidSource;
  bundles: X509BundleSource;
  /** The broker takes ownership: close() closes it. */
  store: Store;
  kek: KeyEncryptionKey;
  /** The policy consulted on every request; absent: no policy, every task and admin request is denied. */
  policy?: PolicySource;
  host: string;
  port: number;
  /** The HTTP port for /.well-known/jwks.json; undefined: no HTTP listener. */
  http?: { host: string; port: number };
  /** Apply pending migrations at start; otherwise refuse to start while any is pending. */
  migrate?: boolean;
  tokenAlg?: TokenAlg;
  /** Token `iss`; default: the broker's own SPIFFE ID. */
  issuer?: string;
  limits?: Partial<LifecycleLimits>;
  /** How often the expiry sweeper runs; 0 disables it. */
  sweepIntervalMs?: number;
  /** Token rows are deleted this long after they expire (their audit events stay). */
  tokenRetentionSeconds?: number;
  clock?: () => Date;
  refusedConnectionLingerMs?: number;
  /** The broker's metrics; default: a new registry with the default process metrics. */
  metrics?: BrokerMetrics;
  /** How often readiness is evaluated on its own (default 5 s; 0: only on demand). */
  readinessIntervalMs?: number;
  /** How long a database ping may take before the broker counts as not ready (default 1 s). */
  databasePingTimeoutMs?: number;
  /** Per-caller and broker-wide limits on calls in flight. */
  admission?: Partial<AdmissionLimits>;
  /** Largest request message accepted (bytes); default 1 MiB. */
  maxMessageBytes?: number;
  /** Bounds on connections and handshakes. */
  connectionLimits?: Partial<ConnectionLimits>;
  /** Readiness fails after this many write transactions failed in a row (default 5). */
  writeFailureThreshold?: number;
  /** Checks added to the built-in ones (database, migrations, svid, policy), e.g. from a Workload API source. */
  readinessChecks?: ReadinessCheck[];
}

export interface RunningTaskBroker extends RunningBroker {
  readonly httpPort: number | undefined;
  readonly lifecycle: TaskLifecycle;
  readonly admin: TaskAdmin;
  readonly keys: SigningKeyRing;
  readonly store: Store;
  readonly metrics: BrokerMetrics;
  readonly readiness: Readiness;
  /** Runs one sweep now (also what the timer runs). */
  sweep(): Promise<number>;
}

/** The SVID facts metrics report: expiry, and notBefore of the leaf (parsed once per identity). */
function svidInfo(): (identity: TlsIdentity | undefined) => { notAfter: Date; notBefore?: Date } | undefined {
  const cache = new WeakMap<TlsIdentity, Date | null>();
  return (identity) => {
    if (!identity) return undefined;
    let notBefore = cache.get(identity);
    if (notBefore === undefined) {
      try {
        notBefore = parsePemCertificates(identity.certChainPem)[0]?.notBefore ?? null;
      } catch {
        notBefore = null;
      }
      cache.set(identity, notBefore);
    }
    return { notAfter: identity.notAfter, ...(notBefore ? { notBefore } : {}) };
  };
}

export async function startTaskBroker(options: TaskBrokerOptions): Promise<RunningTaskBroker> {
  const { logger, store } = options;
  const clock = options.clock ?? (() => new Date());
  const cleanups: Array<() => Promise<void> | void> = [() => store.close()];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn();
  };
  const metrics = options.metrics ?? new BrokerMetrics({ clock });
  metrics.watchPool(() => store.poolStats());
  const svid = svidInfo();
  metrics.watchSvid(() => svid(options.identity.current()));
  const source = options.identity as Partial<{ status(): { connected: boolean; lastSvidUpdate: Date | undefined } }>;
  if (typeof source.status === 'function') {
    const status = source.status.bind(options.identity);
    metrics.watchSvidSource(() => {
      const s = status();
      return { connected: s.connected, lastUpdate: s.lastSvidUpdate };
    });
  }
  const bundles = options.bundles;
  if (isObservableBundles(bundles)) cleanups.push(metrics.watchBundles(bundles, (td) => bundles.getX509Bundle(td) !== undefined));
  try {
    if (options.migrate) {
      const applied = await migrate(store.db);
      if (applied.length > 0) logger.info({ applied }, 'database migrated');
    } else {
      const { pending } = await migrationStatus(store.db);
      if (pending.length > 0) throw new Error(`the database needs migrations (${pending.join(', ')}): run 'task-broker migrate' or start with --migrate`);
    }
    const issuer = options.issuer ?? options.identity.current()?.spiffeId.toString();
    if (!issuer) throw new Error('no token issuer: the broker has no SVID yet and --issuer is not set');
    const limits = options.limits ?? {};
    const keys = new SigningKeyRing({
      db: store.db,
      kek: options.kek,
      alg: options.tokenAlg ?? 'ES256',
      clock: options.clock,
      maxTokenTtlSeconds: limits.maxTokenTtlSeconds ?? 15 * 60,
      logger,
    });
    await keys.init();
    const policy = options.policy ?? new StaticPolicySource(undefined);
    metrics.watchPolicy(() => policy.status());
    metrics.watchWriteFailures(() => store.writes.consecutiveFailures);
    if (!policy.current()) logger.warn('no policy loaded: every task and admin request will be denied (start with --policy FILE)');
    const lifecycle = new TaskLifecycle({
      db: store.db,
      keys,
      issuer,
      limits,
      clock: options.clock,
      policy,
      transact: (work) => store.transaction(work),
      store,
      observer: {
        taskEnded: (state, revokedTokens) => {
          metrics.tasksEnded.inc({ state });
          if (revokedTokens > 0) metrics.tokensRevoked.inc(revokedTokens);
        },
        auditWritten: (seconds) => metrics.auditWriteDuration.observe(seconds),
        batchCommitted: (operations, seconds) => {
          metrics.writeBatchOperations.observe(operations);
          metrics.writeBatchDuration.observe(seconds);
        },
      },
    });
    const admin = new TaskAdmin({ db: store.db, units: lifecycle.units, rows: lifecycle.rows, keys, policy });

    // Readiness: evaluated now, every few seconds, on demand (/readyz) and when the policy or SVID changes.
    const readiness = new Readiness({ logger, intervalMs: options.readinessIntervalMs, clock });
    readiness
      .add(databaseCheck(store, options.databasePingTimeoutMs))
      .add(migrationsCheck(store))
      .add(svidCheck(options.identity, clock))
      .add(policyCheck(policy))
      .add(writesCheck(store, { threshold: options.writeFailureThreshold }))
      .add(fileDescriptorsCheck());
    for (const check of options.readinessChecks ?? []) readiness.add(check);
    metrics.watchReadiness(() => readiness.report);
    const reevaluate = () => void readiness.evaluate();
    const unsubscribes = [policy.onChange(reevaluate), options.identity.onChange(reevaluate)];
    cleanups.push(async () => {
      for (const unsubscribe of unsubscribes) unsubscribe();
      await readiness.close();
    });
    await readiness.evaluate();

    let httpPort: number | undefined;
    if (options.http) {
      const http = new OpsHttpServer({ logger });
      http.route(JWKS_PATH, jwksRoute(keys));
      http.route('/healthz', healthzRoute());
      http.route('/readyz', readyzRoute(readiness));
      http.route(METRICS_PATH, metricsRoute(metrics));
      httpPort = await http.listen(options.http.host, options.http.port);
      cleanups.push(() => http.close());
      logger.info({ host: options.http.host, port: httpPort, paths: [JWKS_PATH, '/healthz', '/readyz', METRICS_PATH] }, 'HTTP listening');
    }

    const sweep = async () => {
      const requestId = `sweep-${randomUUID()}`;
      const expired = await lifecycle.sweepExpired({ requestId });
      const pruned = await lifecycle.pruneTokens(options.tokenRetentionSeconds ?? 7 * 24 * 3600);
      if (expired > 0 || pruned > 0) logger.info({ expired, prunedTokens: pruned, requestId }, 'expiry sweep');
      return expired;
    };
    let sweeping: Promise<unknown> | undefined;
    const interval = options.sweepIntervalMs ?? 30_000;
    if (interval > 0) {
      const timer = setInterval(() => {
        if (sweeping) return;
        sweeping = sweep()
          .catch((err: unknown) => logger.error({ err: (err as Error).message }, 'expiry sweep failed; will retry'))
          .finally(() => (sweeping = undefined));
      }, interval);
      timer.unref();
      cleanups.push(async () => {
        clearInterval(timer);
        await sweeping;
      });
    }

    const grpcBroker = await startBroker({
      logger,
      identity: options.identity,
      bundles: options.bundles,
      host: options.host,
      port: options.port,
      clock: options.clock,
      refusedConnectionLingerMs: options.refusedConnectionLingerMs,
      lifecycle,
      admin,
      metrics,
      readiness,
      admission: options.admission,
      databaseQueue: () => store.poolStats().waiting + lifecycle.writeQueue,
      maxMessageBytes: options.maxMessageBytes,
      connectionLimits: options.connectionLimits,
    });
    metrics.watchConnections(() => grpcBroker.server);
    readiness.start();
    logger.info({ database: store.description, issuer, alg: options.tokenAlg ?? 'ES256', ready: readiness.ready }, 'task-broker ready');
    let closing: Promise<void> | undefined;
    return {
      ...grpcBroker,
      httpPort,
      lifecycle,
      admin,
      keys,
      store,
      metrics,
      readiness,
      sweep,
      close(graceMs?: number) {
        // Not ready first (health NOT_SERVING, /readyz 503), then stop taking connections and let
        // in-flight calls finish, then release the rest: HTTP, sweeper, database last.
        closing ??= (async () => {
          readiness.shutdown();
          await grpcBroker.close(graceMs);
          await cleanup();
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
