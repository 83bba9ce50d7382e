/**
 * The composition root: the one place that wires concrete parts into a running broker.
 *
 * startBroker: the gRPC side (SVID-verifying TLS server, services, health, reflection).
 * startTaskBroker: the whole broker: storage, signing keys, lifecycle, gRPC, the HTTP port
 * with the JWKS, and the expiry sweeper.
 */
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { randomUUID } from 'node:crypto';
import { brokerPackageDefinition, brokerProto } from './protocol/proto.js';
import { adminHandlers } from './api/admin-service.js';
import { taskBrokerHandlers } from './api/task-broker-service.js';
import { StaticPolicySource, type PolicySource } from './policy/policy-source.js';
import { TaskAdmin } from './tasks/admin.js';
import { OpsHttpServer } from './http/ops-server.js';
import type { Logger } from './observability/logger.js';
import type { X509BundleSource } from './spiffe/bundle.js';
import type { Store } from './store/database.js';
import { migrate, migrationStatus } from './store/migrate.js';
import { TaskLifecycle, type LifecycleLimits } from './tasks/lifecycle.js';
import { JWKS_PATH, jwksRoute } from './tokens/jwks.js';
import type { KeyEncryptionKey } from './tokens/kek.js';
import { SigningKeyRing, type TokenAlg } from './tokens/keyring.js';
import type { ServerIdentitySource } from './transport/server-identity.js';
import { SvidServer } from './transport/svid-server.js';

export interface BrokerDeps {
  logger: Logger;
  identity: ServerIdentitySource;
  bundles: X509BundleSource;
  host: string;
  port: number;
  clock?: () => Date;
  refusedConnectionLingerMs?: number;
  lifecycle?: TaskLifecycle;
  admin?: TaskAdmin;
}

export interface RunningBroker {
  readonly port: number;
  readonly server: SvidServer;
  readonly health: HealthImplementation;
  close(graceMs?: number): Promise<void>;
}

export const SERVICE_NAMES = ['taskbroker.v1.TaskBroker', 'taskbroker.v1.TaskBrokerAdmin'] as const;

export async function startBroker(deps: BrokerDeps): Promise<RunningBroker> {
  const server = new SvidServer({
    bundles: deps.bundles,
    identity: deps.identity,
    logger: deps.logger,
    clock: deps.clock,
    refusedConnectionLingerMs: deps.refusedConnectionLingerMs,
  });
  const proto = brokerProto();
  server.grpc.addService(proto.taskbroker.v1.TaskBroker.service, taskBrokerHandlers({ logger: deps.logger, lifecycle: deps.lifecycle }));
  if (deps.admin) server.grpc.addService(proto.taskbroker.v1.TaskBrokerAdmin.service, adminHandlers({ logger: deps.logger, admin: deps.admin }));
  const served = SERVICE_NAMES.filter((name) => name !== 'taskbroker.v1.TaskBrokerAdmin' || deps.admin);

  const health = new HealthImplementation({ '': 'NOT_SERVING', ...Object.fromEntries(served.map((s) => [s, 'NOT_SERVING'])) });
  health.addToServer(server.grpc);
  // Reflection describes every service served here, health included.
  new ReflectionService({ ...brokerPackageDefinition(), ...loadSync(healthProtoPath) }).addToServer(server.grpc);

  const port = await server.listen(deps.host, deps.port);
  for (const name of ['', ...served]) health.setStatus(name, 'SERVING');
  deps.logger.info({ host: deps.host, port, spiffeId: deps.identity.current()?.spiffeId.toString() }, 'task-broker listening');

  return {
    port,
    server,
    health,
    async close(graceMs = 10_000) {
      for (const name of ['', ...served]) health.setStatus(name, 'NOT_SERVING');
      await server.shutdown(graceMs);
    },
  };
}

export interface TaskBrokerOptions {
  logger: Logger;
  identity: ServerIdentitySource;
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
}

export interface RunningTaskBroker extends RunningBroker {
  readonly httpPort: number | undefined;
  readonly lifecycle: TaskLifecycle;
  readonly admin: TaskAdmin;
  readonly keys: SigningKeyRing;
  readonly store: Store;
  /** Runs one sweep now (also what the timer runs). */
  sweep(): Promise<number>;
}

export async function startTaskBroker(options: TaskBrokerOptions): Promise<RunningTaskBroker> {
  const { logger, store } = options;
  const cleanups: Array<() => Promise<void> | void> = [() => store.close()];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) await fn();
  };
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
    if (!policy.current()) logger.warn('no policy loaded: every task and admin request will be denied (start with --policy FILE)');
    const lifecycle = new TaskLifecycle({ db: store.db, keys, issuer, limits, clock: options.clock, policy });
    const admin = new TaskAdmin({ db: store.db, lifecycle, keys, policy, clock: options.clock });

    let httpPort: number | undefined;
    if (options.http) {
      const http = new OpsHttpServer({ logger });
      http.route(JWKS_PATH, jwksRoute(keys));
      httpPort = await http.listen(options.http.host, options.http.port);
      cleanups.push(() => http.close());
      logger.info({ host: options.http.host, port: httpPort, path: JWKS_PATH }, 'HTTP listening');
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
    });
    logger.info({ database: store.description, issuer, alg: options.tokenAlg ?? 'ES256' }, 'task-broker ready');
    return {
      ...grpcBroker,
      httpPort,
      lifecycle,
      admin,
      keys,
      store,
      sweep,
      async close(graceMs?: number) {
        // Stop taking calls first, let in-flight ones finish, then release the rest.
        await grpcBroker.close(graceMs);
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
