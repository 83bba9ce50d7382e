/**
 * `task-broker serve`: the broker as deployed. Flags and environment variables (serve-options.ts
 * and the README's configuration reference) become a BrokerConfig; the app starts from it.
 */
import { brokerConfig, type BrokerConfig, type IdentityConfig } from '../app/config.js';
import { startFromConfig } from '../app/start.js';
import { createLogger } from '../observability/logger.js';
import { parseBundleFileArg } from '../spiffe/bundle-files.js';
import { SpiffeId } from '../spiffe/id.js';
import { parseWorkloadApiAddress, SPIFFE_ENDPOINT_SOCKET } from '../spiffe/workload-api.js';
import { DEFAULT_KEY_REFRESH_INTERVAL_MS, JWKS_MAX_AGE_SECONDS, minimumPrePublicationMs, readableDuration } from '../tokens/key-publication.js';
import { isTokenAlg, TOKEN_ALGS } from '../tokens/keyring.js';
import { listOption, parseDuration, parseListenAddress, stringOption, textOption, UsageError, type ParsedCommand } from './options.js';

type Values = ParsedCommand['values'];

/** A duration flag (its default from the serve spec) in milliseconds; 0 only where `allowZero`. */
function durationOption(values: Values, name: string, { allowZero = false } = {}): number {
  const ms = parseDuration(textOption(values, name), `--${name}`);
  if (ms === 0 && !allowZero) throw new UsageError(`--${name} must be longer than 0s`);
  return ms;
}

function countOption(values: Values, name: string, { min = 1, max = 1_000_000 } = {}): number {
  const text = textOption(values, name);
  const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: a whole number from ${min} to ${max}, got "${text.slice(0, 32)}"`);
  return n;
}

function seconds(values: Values, name: string): number {
  const ms = parseDuration(textOption(values, name), `--${name}`);
  if (ms < 1000 || ms % 1000 !== 0) throw new UsageError(`--${name}: whole seconds, at least 1s`);
  return ms / 1000;
}

/** The identity part of the configuration: files or the Workload API, never both. */
function identityConfig(values: Values): IdentityConfig {
  const svidCertPath = stringOption(values, 'svid-cert');
  const svidKeyPath = stringOption(values, 'svid-key');
  const bundleArgs = listOption(values, 'bundle');
  const workloadApi = stringOption(values, 'workload-api');
  if (workloadApi !== undefined) {
    const fileOptions = [svidCertPath && '--svid-cert', svidKeyPath && '--svid-key', bundleArgs.length > 0 && '--bundle'].filter(Boolean);
    if (fileOptions.length > 0) {
      throw new UsageError(
        `--workload-api (or ${SPIFFE_ENDPOINT_SOCKET}) cannot be combined with ${fileOptions.join(', ')} (or their TASK_BROKER_* variables): ` +
          'with the Workload API the SVID and every trust bundle come from the agent. Use one mode or the other.',
      );
    }
    try {
      parseWorkloadApiAddress(workloadApi);
    } catch (err) {
      throw new UsageError(`--workload-api: ${(err as Error).message}`);
    }
    const spiffeId = stringOption(values, 'workload-api-spiffe-id');
    if (spiffeId !== undefined) {
      try {
        SpiffeId.parse(spiffeId);
      } catch (err) {
        throw new UsageError(`--workload-api-spiffe-id: ${(err as Error).message}`);
      }
    }
    const timeoutMs = parseDuration(textOption(values, 'workload-api-timeout'), '--workload-api-timeout');
    if (timeoutMs <= 0) throw new UsageError('--workload-api-timeout must be longer than 0s');
    return { kind: 'workload-api', address: workloadApi, timeoutMs, ...(spiffeId !== undefined ? { spiffeId } : {}) };
  }
  if (stringOption(values, 'workload-api-spiffe-id') !== undefined) {
    throw new UsageError('--workload-api-spiffe-id only applies with --workload-api (or SPIFFE_ENDPOINT_SOCKET)');
  }
  if (!svidCertPath || !svidKeyPath) {
    throw new UsageError(
      "the broker's own SVID is required: --svid-cert and --svid-key (or TASK_BROKER_SVID_CERT and TASK_BROKER_SVID_KEY), or --workload-api (or SPIFFE_ENDPOINT_SOCKET) to take it from a SPIRE agent",
    );
  }
  const bundles = bundleArgs.map((arg) => {
    try {
      return parseBundleFileArg(arg);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  });
  if (bundles.length === 0) {
    throw new UsageError('at least one --bundle TRUST_DOMAIN=FILE is required: with no trust bundle no caller can be verified');
  }
  return { kind: 'files', svidCertPath, svidKeyPath, bundles };
}

export function serveConfig(parsed: ParsedCommand): BrokerConfig {
  const { values } = parsed;
  const identity = identityConfig(values);
  const kekFile = stringOption(values, 'kek-file');
  const kekValue = stringOption(values, 'kek');
  if (!kekFile === !kekValue) {
    throw new UsageError(
      'exactly one key-encryption key is required: --kek-file FILE or TASK_BROKER_KEK (generate one with: head -c 32 /dev/urandom | base64)',
    );
  }
  const alg = textOption(values, 'token-alg');
  if (!isTokenAlg(alg)) throw new UsageError(`--token-alg: ${TOKEN_ALGS.join(' or ')}, not "${alg}"`);
  const httpListen = textOption(values, 'http-listen');
  const limits = {
    defaultTaskTtlSeconds: seconds(values, 'default-task-ttl'),
    maxTaskTtlSeconds: seconds(values, 'max-task-ttl'),
    defaultTokenTtlSeconds: seconds(values, 'default-token-ttl'),
    maxTokenTtlSeconds: seconds(values, 'max-token-ttl'),
  };
  if (limits.defaultTaskTtlSeconds > limits.maxTaskTtlSeconds) throw new UsageError('--default-task-ttl is longer than --max-task-ttl');
  if (limits.defaultTokenTtlSeconds > limits.maxTokenTtlSeconds) throw new UsageError('--default-token-ttl is longer than --max-token-ttl');
  const keyPrePublicationMs = parseDuration(textOption(values, 'key-pre-publication'), '--key-pre-publication');
  if (keyPrePublicationMs < minimumPrePublicationMs()) {
    throw new UsageError(
      `--key-pre-publication must be at least ${minimumPrePublicationMs() / 1000}s: the JWKS cache lifetime (${JWKS_MAX_AGE_SECONDS}s) ` +
        `plus the replicas' key refresh interval (${readableDuration(DEFAULT_KEY_REFRESH_INTERVAL_MS)}); ` +
        `shorter, a verifier could meet a new key before its cached key set has it (got ${readableDuration(keyPrePublicationMs)})`,
    );
  }
  return brokerConfig({
    listen: parseListenAddress(textOption(values, 'listen')),
    ...(httpListen === 'off' ? {} : { http: parseListenAddress(httpListen) }),
    identity,
    policyPath: stringOption(values, 'policy'),
    migrate: values.migrate === true || values.migrate === 'true',
    kek: kekFile ? { file: kekFile } : { base64: kekValue },
    tokenAlg: alg,
    issuer: stringOption(values, 'issuer'),
    limits,
    keyPrePublicationMs,
    sweepIntervalMs: durationOption(values, 'sweep-interval', { allowZero: true }),
    tokenRetentionSeconds: seconds(values, 'token-retention'),
    revocationHeartbeatMs: durationOption(values, 'revocation-heartbeat'),
    revocationPollIntervalMs: durationOption(values, 'revocation-poll-interval'),
    filePollIntervalMs: durationOption(values, 'file-poll-interval', { allowZero: true }),
    shutdownGraceMs: durationOption(values, 'shutdown-grace', { allowZero: true }),
    logLevel: textOption(values, 'log-level'),
    database: {
      url: stringOption(values, 'database-url'),
      dataDir: textOption(values, 'data-dir'),
      waitMs: durationOption(values, 'database-wait', { allowZero: true }),
      poolSize: countOption(values, 'database-pool-size', { max: 1_000 }),
      poolTimeoutMs: durationOption(values, 'database-pool-timeout'),
      statementTimeoutMs: durationOption(values, 'statement-timeout'),
    },
    connectionLimits: {
      handshakeTimeoutMs: durationOption(values, 'handshake-timeout'),
      maxConnections: textOption(values, 'max-connections') === 'auto' ? undefined : countOption(values, 'max-connections'),
      maxHandshakes: countOption(values, 'max-handshakes'),
      idleTimeoutMs: durationOption(values, 'max-connection-idle', { allowZero: true }),
      maxConnectionAgeMs: durationOption(values, 'max-connection-age', { allowZero: true }),
      maxConcurrentStreams: countOption(values, 'max-concurrent-streams', { max: 100_000 }),
    },
    admission: {
      maxInFlightPerCaller: countOption(values, 'max-calls-per-caller'),
      maxActive: countOption(values, 'max-active-calls'),
      callerRatePerSecond: countOption(values, 'caller-rate', { min: 0 }),
      maxInFlight: countOption(values, 'max-in-flight'),
    },
  });
}

export async function runServe(parsed: ParsedCommand): Promise<number> {
  const config = serveConfig(parsed);
  const logger = createLogger({ level: config.logLevel as 'info' });
  const broker = await startFromConfig(config, logger);
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      logger.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down');
      process.off('SIGTERM', stop).off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop).on('SIGINT', stop);
  });
  await broker.close(config.shutdownGraceMs);
  logger.info('stopped');
  logger.flush();
  return 0;
}
