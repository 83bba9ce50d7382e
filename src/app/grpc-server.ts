/**
 * The broker's gRPC side: the SVID-verifying TLS server with the call recorder, admission and
 * request decoding in front of the TaskBroker and TaskBrokerAdmin services, gRPC health driven
 * by readiness, and reflection.
 */
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { adminHandlers } from '../api/admin-service.js';
import { CallAdmission, type AdmissionLimits } from '../api/admission.js';
import { callRecorder } from '../api/call-record.js';
import { RequestDecoders } from '../api/request-decoding.js';
import { taskBrokerHandlers } from '../api/task-broker-service.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics } from '../observability/metrics.js';
import type { Readiness } from '../observability/readiness.js';
import { brokerPackageDefinition, brokerProto } from '../protocol/proto.js';
import type { TaskAdmin } from '../tasks/admin.js';
import type { TaskLifecycle } from '../tasks/lifecycle.js';
import type { RevocationFeed } from '../tasks/revocation-feed.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import type { RevocationStreamLimits } from '../api/revocation-stream.js';
import { DEFAULT_MAX_MESSAGE_BYTES, SvidServer, type ConnectionLimits } from '../transport/svid-server.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import type { TrustBundles } from './identity.js';

export interface BrokerDeps {
  logger: Logger;
  identity: X509SvidSource;
  bundles: TrustBundles;
  host: string;
  port: number;
  clock?: () => Date;
  refusedConnectionLingerMs?: number;
  lifecycle: TaskLifecycle;
  admin: TaskAdmin;
  /** The replica's view of the revocation log (WatchRevocations). */
  revocations: RevocationFeed;
  revocationStreamLimits?: Partial<RevocationStreamLimits>;
  keys: Pick<SigningKeyRing, 'jwks' | 'activeKey'>;
  /** Counts and times every call. */
  metrics: BrokerMetrics;
  /** Drives the gRPC health statuses: SERVING while ready, NOT_SERVING otherwise. */
  readiness: Readiness;
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
  const { logger, metrics, readiness } = deps;
  const admission = new CallAdmission({
    limits: deps.admission,
    metrics,
    databaseQueue: deps.databaseQueue,
    services: SERVICE_NAMES,
    // A revocation stream lives as long as its resource server: it has limits of its own (revocation-stream.ts).
    exempt: ['/taskbroker.v1.TaskBroker/WatchRevocations'],
  });
  const decoders = new RequestDecoders();
  const maxMessageBytes = deps.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const server = new SvidServer({
    bundles: deps.bundles,
    identity: deps.identity,
    logger,
    clock: deps.clock,
    refusedConnectionLingerMs: deps.refusedConnectionLingerMs,
    limits: deps.connectionLimits,
    observer: {
      connectionAccepted: () => metrics.connectionsAccepted.inc(),
      connectionRefused: (reason) => metrics.connectionsRefused.inc({ reason }),
      handshakeFailed: (reason) => metrics.handshakeFailures.inc({ reason }),
    },
    grpcOptions: { 'grpc.max_receive_message_length': maxMessageBytes },
    // Every call is recorded, refused ones included; then authenticated, admitted, decoded.
    outerInterceptors: [callRecorder({ logger, metrics, maxMessageBytes })],
    interceptors: [admission.interceptor(), decoders.interceptor()],
  });
  const proto = brokerProto();
  server.grpc.addService(
    decoders.undecoded(proto.taskbroker.v1.TaskBroker.service),
    taskBrokerHandlers({
      logger,
      lifecycle: deps.lifecycle,
      metrics,
      revocations: deps.revocations,
      revocationStreamLimits: deps.revocationStreamLimits,
      keys: deps.keys,
    }),
  );
  server.grpc.addService(decoders.undecoded(proto.taskbroker.v1.TaskBrokerAdmin.service), adminHandlers({ logger, admin: deps.admin }));
  const healthServices = ['', ...SERVICE_NAMES];

  const health = new HealthImplementation(Object.fromEntries(healthServices.map((s) => [s, 'NOT_SERVING'])));
  health.addToServer(server.grpc);
  // Reflection describes every service served here, health included.
  new ReflectionService({ ...brokerPackageDefinition(), ...loadSync(healthProtoPath) }).addToServer(server.grpc);
  const setHealth = (serving: boolean) => {
    for (const name of healthServices) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
  };

  const port = await server.listen(deps.host, deps.port);
  setHealth(readiness.ready);
  const unfollow = readiness.onChange((report) => setHealth(report.ready));
  logger.info({ host: deps.host, port, spiffeId: deps.identity.current()?.spiffeId.toString() }, 'task-broker listening');

  return {
    port,
    server,
    health,
    healthServices,
    async close(graceMs = 10_000) {
      unfollow();
      setHealth(false);
      // Streams would hold a graceful shutdown until the grace runs out: they end first, with UNAVAILABLE.
      try {
        await deps.revocations.close();
        await server.shutdown(graceMs);
      } finally {
        admission.close();
      }
    },
  };
}
