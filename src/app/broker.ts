/**
 * The whole broker from its parts: storage, signing keys, policy, lifecycle and admin, the gRPC
 * server, the HTTP port with the JWKS, /healthz, /readyz and /metrics, readiness driving the gRPC
 * health statuses, metrics, and the expiry sweeper. start.ts builds the parts from a BrokerConfig;
 * tests hand them in directly.
 */
import type { AdmissionLimits } from '../api/admission.js';
import { OpsHttpServer } from '../http/ops-server.js';
import type { Logger } from '../observability/logger.js';
import { healthzRoute, JWKS_PATH, jwksRoute, METRICS_PATH, metricsRoute, readyzRoute } from '../http/ops-routes.js';
import { BrokerMetrics } from '../observability/metrics.js';
import type { Readiness, ReadinessCheck } from '../observability/readiness.js';
import { StaticPolicySource, type PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import { migrate, migrationStatus } from '../store/migrate.js';
import { SubjectTokenVerifier } from '../policy/subject-tokens.js';
import { TaskAdmin } from '../tasks/admin.js';
import { TaskLifecycle } from '../tasks/lifecycle.js';
import { RevocationFeed } from '../tasks/revocation-feed.js';
import type { RevocationStreamLimits } from '../api/revocation-stream.js';
import type { LifecycleLimits } from '../tasks/limits.js';
import type { KeyEncryptionKey } from '../tokens/kek.js';
import { SigningKeyRing, type TokenAlg } from '../tokens/keyring.js';
import type { ConnectionLimits } from '../transport/svid-server.js';
import { DEFAULTS } from './config.js';
import { startBroker, type RunningBroker } from './grpc-server.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import type { TrustBundles } from './identity.js';
import { observeDomain, observeInfrastructure } from './observe.js';
import { brokerReadiness } from './readiness-checks.js';
import { startSweeper } from './sweeper.js';

export interface TaskBrokerOptions {
  logger: Logger;
  identity: X509SvidSource;
  bundles: TrustBundles;
  /** The broker takes ownership: close() closes it. */
  store: Store;
  kek: KeyEncryptionKey;
  /** The policy consulted on every request; absent: no policy, every task and admin request is denied. */
  policy?: PolicySource;
  host: string;
  port: number;
  /** How often each replica reads the revocation log without a notification (default 1 s). */
  revocationPollIntervalMs?: number;
  /** How often revocation streams get a heartbeat (default 5 s). */
  revocationHeartbeatIntervalMs?: number;
  revocationStreamLimits?: Partial<RevocationStreamLimits>;
  /** The HTTP port for /.well-known/jwks.json, /healthz, /readyz and /metrics; undefined: no HTTP listener. */
  http?: { host: string; port: number };
  /** Apply pending migrations at start; otherwise refuse to start while any is pending. */
  migrate?: boolean;
  tokenAlg?: TokenAlg;
  /** Token `iss`; default: the broker's own SPIFFE ID. */
  issuer?: string;
  limits?: Partial<LifecycleLimits>;
  /** How long a rotated-in signing key is in the JWKS before it signs (default DEFAULTS.keyPrePublicationMs). */
  keyPrePublicationMs?: number;
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
  /** Checks added to the built-in ones (database, migrations, svid, policy). */
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

/** Applies pending migrations, or refuses to go on while any is pending. */
async function prepareSchema(store: Store, apply: boolean, logger: Logger): Promise<void> {
  if (apply) {
    const applied = await migrate(store.db);
    if (applied.length > 0) logger.info({ applied }, 'database migrated');
    return;
  }
  const { pending } = await migrationStatus(store.db);
  if (pending.length > 0) throw new Error(`the database needs migrations (${pending.join(', ')}): run 'task-broker migrate' or start with --migrate`);
}

/** The HTTP listener: JWKS, liveness, readiness and metrics. */
async function startOpsServer(
  address: { host: string; port: number },
  parts: { logger: Logger; keys: SigningKeyRing; readiness: Readiness; metrics: BrokerMetrics },
): Promise<{ port: number; close(): Promise<void> }> {
  const { logger } = parts;
  const http = new OpsHttpServer({ logger });
  http.route(JWKS_PATH, jwksRoute(parts.keys));
  http.route('/healthz', healthzRoute());
  http.route('/readyz', readyzRoute(parts.readiness));
  http.route(METRICS_PATH, metricsRoute(parts.metrics));
  const port = await http.listen(address.host, address.port);
  logger.info({ host: address.host, port, paths: [JWKS_PATH, '/healthz', '/readyz', METRICS_PATH] }, 'HTTP listening');
  return { port, close: () => http.close() };
}

export async function startTaskBroker(options: TaskBrokerOptions): Promise<RunningTaskBroker> {
  const { logger, store, identity } = options;
  const clock = options.clock ?? (() => new Date());
  const tokenAlg = options.tokenAlg ?? DEFAULTS.tokenAlg;
  const limits: LifecycleLimits = { ...DEFAULTS.limits, ...options.limits };
  // Released in reverse order on close or on a failed start: the database last.
  const cleanups: Array<() => Promise<void> | void> = [() => store.close()];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn();
  };
  const metrics = options.metrics ?? new BrokerMetrics({ clock });
  cleanups.push(observeInfrastructure(metrics, { store, identity, bundles: options.bundles }));
  try {
    await prepareSchema(store, options.migrate ?? DEFAULTS.migrate, logger);
    const issuer = options.issuer ?? identity.current()?.spiffeId.toString();
    if (!issuer) throw new Error('no token issuer: the broker has no SVID yet and --issuer is not set');
    const keys = new SigningKeyRing({
      db: store.db,
      kek: options.kek,
      alg: tokenAlg,
      clock: options.clock,
      maxTokenTtlSeconds: limits.maxTokenTtlSeconds,
      prePublicationMs: options.keyPrePublicationMs ?? DEFAULTS.keyPrePublicationMs,
      logger,
    });
    await keys.init();
    const policy = options.policy ?? new StaticPolicySource(undefined);
    observeDomain(metrics, { store, policy });
    if (!policy.current()) logger.warn('no policy loaded: every task and admin request will be denied (start with --policy FILE)');
    // Subject tokens (the principal behind a task, an approver) are verified against the policy's subject_issuers.
    const subjects = new SubjectTokenVerifier({ now: clock });
    cleanups.push(() => subjects.close());
    const lifecycle = new TaskLifecycle({
      store,
      keys,
      issuer,
      limits,
      clock: options.clock,
      policy,
      subjects,
      bundles: options.bundles,
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
    const admin = new TaskAdmin({ db: store.db, units: lifecycle.units, rows: lifecycle.rows, keys, policy, subjects });

    const { readiness, close: closeReadiness } = await brokerReadiness({
      logger,
      clock,
      store,
      identity,
      policy,
      metrics,
      intervalMs: options.readinessIntervalMs,
      databasePingTimeoutMs: options.databasePingTimeoutMs,
      writeFailureThreshold: options.writeFailureThreshold,
      extraChecks: options.readinessChecks,
    });
    cleanups.push(closeReadiness);

    let httpPort: number | undefined;
    if (options.http) {
      const ops = await startOpsServer(options.http, { logger, keys, readiness, metrics });
      httpPort = ops.port;
      cleanups.push(() => ops.close());
    }

    const sweeper = startSweeper({
      lifecycle,
      logger,
      intervalMs: options.sweepIntervalMs ?? DEFAULTS.sweepIntervalMs,
      tokenRetentionSeconds: options.tokenRetentionSeconds ?? DEFAULTS.tokenRetentionSeconds,
    });
    cleanups.push(() => sweeper.close());

    const revocations = new RevocationFeed({
      store,
      pollIntervalMs: options.revocationPollIntervalMs,
      heartbeatIntervalMs: options.revocationHeartbeatIntervalMs,
      onProblem: (message) => logger.warn(message),
      onDispatch: (entries) => metrics.revocationsDispatched.inc(entries),
    });
    metrics.watchRevocationFeed(() => ({ streams: revocations.subscriberCount, lastReadAt: revocations.lastReadAt }));
    await revocations.start();
    cleanups.push(() => revocations.close());

    const grpcBroker = await startBroker({
      revocations,
      revocationStreamLimits: options.revocationStreamLimits,
      keys,
      logger,
      identity,
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
    logger.info({ database: store.description, issuer, alg: tokenAlg, ready: readiness.ready }, 'task-broker ready');
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
      sweep: () => sweeper.sweep(),
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
