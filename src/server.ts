/**
 * The composition root: the one place that wires concrete parts into a running broker.
 */
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { brokerPackageDefinition, brokerProto } from './protocol/proto.js';
import { taskBrokerHandlers } from './api/task-broker-service.js';
import type { Logger } from './observability/logger.js';
import type { X509BundleSource } from './spiffe/bundle.js';
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
}

export interface RunningBroker {
  readonly port: number;
  readonly server: SvidServer;
  readonly health: HealthImplementation;
  close(graceMs?: number): Promise<void>;
}

export const SERVICE_NAMES = ['taskbroker.v1.TaskBroker'] as const;

export async function startBroker(deps: BrokerDeps): Promise<RunningBroker> {
  const server = new SvidServer({
    bundles: deps.bundles,
    identity: deps.identity,
    logger: deps.logger,
    clock: deps.clock,
    refusedConnectionLingerMs: deps.refusedConnectionLingerMs,
  });
  const proto = brokerProto();
  server.grpc.addService(proto.taskbroker.v1.TaskBroker.service, taskBrokerHandlers({ logger: deps.logger }));

  const health = new HealthImplementation({ '': 'NOT_SERVING', ...Object.fromEntries(SERVICE_NAMES.map((s) => [s, 'NOT_SERVING'])) });
  health.addToServer(server.grpc);
  // Reflection describes every service served here, health included.
  new ReflectionService({ ...brokerPackageDefinition(), ...loadSync(healthProtoPath) }).addToServer(server.grpc);

  const port = await server.listen(deps.host, deps.port);
  for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'SERVING');
  deps.logger.info({ host: deps.host, port, spiffeId: deps.identity.current()?.spiffeId.toString() }, 'task-broker listening');

  return {
    port,
    server,
    health,
    async close(graceMs = 10_000) {
      for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, 'NOT_SERVING');
      await server.shutdown(graceMs);
    },
  };
}
