/**
 * The one entry point from a configuration to a running broker: tracing (when the OTEL_*
 * environment asks for it), key-encryption key, policy, identity and database opened in turn,
 * then the broker started on them. `serve` and `dev` start here.
 */
import type { Logger } from '../observability/logger.js';
import { startTracing, stopTracing } from '../observability/tracing.js';
import { FilePolicySource } from '../policy/policy-source.js';
import { openStore } from '../store/database.js';
import { loadKek } from '../tokens/kek.js';
import { startTaskBroker, type RunningTaskBroker } from './broker.js';
import type { BrokerConfig } from './config.js';
import type { X509Source } from '../spiffe/x509-source.js';
import { setUpIdentity } from './identity.js';

/**
 * Starts the whole broker from `config`: SVID and bundles in place (with the Workload API, after
 * the first SVID arrived, within its timeout), database opened, keys ready. close() also stops
 * following the policy, SVID and bundle files or the Workload API, and then stops tracing (its
 * spans exported within its shutdown bound, 5 s).
 */
export async function startFromConfig(config: BrokerConfig, logger: Logger): Promise<RunningTaskBroker> {
  // First: an OTEL_* value it refuses stops the start before anything is opened.
  const tracing = await startTracing({ logger });
  if (tracing.enabled) logger.info({ reason: tracing.reason }, 'tracing on (OpenTelemetry)');
  let policy: FilePolicySource | undefined;
  let identity: X509Source | undefined;
  try {
    const kek = await loadKek(config.kek);
    if (config.policyPath) policy = await FilePolicySource.load(config.policyPath, { logger, pollIntervalMs: config.filePollIntervalMs });
    identity = await setUpIdentity(config.identity, { logger, filePollIntervalMs: config.filePollIntervalMs });
    const { database } = config;
    const store = await openStore({
      databaseUrl: database.url,
      dataDir: database.dataDir,
      connectWaitMs: database.waitMs,
      maxConnections: database.poolSize,
      poolTimeoutMs: database.poolTimeoutMs,
      statementTimeoutMs: database.statementTimeoutMs,
      onConnectionProblem: ({ phase, message, attempt, retryInMs }) =>
        phase === 'start'
          ? logger.warn({ err: message, attempt, retryInMs }, 'database not reachable yet; retrying')
          : logger.warn({ err: message }, 'database connection failed; the pool replaces it'),
    });
    const broker = await startTaskBroker({
      logger,
      identity,
      bundles: identity.bundles,
      store,
      kek,
      policy,
      host: config.listen.host,
      port: config.listen.port,
      http: config.http,
      migrate: config.migrate,
      tokenAlg: config.tokenAlg,
      issuer: config.issuer,
      limits: config.limits,
      keyPrePublicationMs: config.keyPrePublicationMs,
      sweepIntervalMs: config.sweepIntervalMs,
      tokenRetentionSeconds: config.tokenRetentionSeconds,
      revocationPollIntervalMs: config.revocationPollIntervalMs,
      revocationHeartbeatIntervalMs: config.revocationHeartbeatMs,
      connectionLimits: config.connectionLimits,
      admission: config.admission,
    });
    const opened = identity;
    return {
      ...broker,
      async close(graceMs?: number) {
        await broker.close(graceMs);
        opened.close();
        policy?.close();
        await stopTracing(logger);
      },
    };
  } catch (err) {
    identity?.close();
    policy?.close();
    await stopTracing(logger);
    throw err;
  }
}
