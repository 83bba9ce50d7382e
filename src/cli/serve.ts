/**
 * `task-broker serve`: the broker as deployed. Flags and environment variables are listed in
 * the spec below and in the README's configuration reference.
 */
import { readFileSync } from 'node:fs';
import type { AdmissionLimits } from '../api/admission.js';
import { openFilesLimit } from '../observability/capacity-checks.js';
import { createLogger, type Logger } from '../observability/logger.js';
import type { ConnectionLimits } from '../transport/svid-server.js';
import { startTaskBroker, type RunningTaskBroker } from '../server.js';
import type { TrustBundleSet } from '../spiffe/bundle.js';
import { parseBundleFileArg } from '../spiffe/bundle-files.js';
import { FileX509Source } from '../spiffe/file-x509-source.js';
import { SpiffeId } from '../spiffe/id.js';
import { parseWorkloadApiAddress, SPIFFE_ENDPOINT_SOCKET } from '../spiffe/workload-api.js';
import { WorkloadApiSource } from '../spiffe/workload-api-source.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import { openStore } from '../store/database.js';
import { loadKek } from '../tokens/kek.js';
import type { TokenAlg } from '../tokens/keyring.js';
import { FilePolicySource } from '../policy/policy-source.js';
import { listOption, parseDuration, parseListenAddress, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from './options.js';

/** Where the data lives: shared by serve and migrate. */
export const storageOptions: Record<string, OptionSpec> = {
  'database-url': { type: 'string', placeholder: 'URL', env: 'TASK_BROKER_DATABASE_URL', description: 'PostgreSQL connection URL (postgres://…); when absent, embedded PGlite in --data-dir' },
  'data-dir': { type: 'string', placeholder: 'DIR', env: 'TASK_BROKER_DATA_DIR', default: './task-broker-data', description: 'Directory of the embedded PGlite database' },
  'database-wait': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_DATABASE_WAIT',
    default: '2m',
    description:
      "How long to keep trying to reach PostgreSQL at start (with backoff) before giving up, so a broker may start before its database ('0s': one attempt). Keep it below the startup probe's budget",
  },
};

/** Limits on what callers and peers can hold: every one has a default and a flag. */
export const limitOptions: Record<string, OptionSpec> = {
  'database-pool-size': { type: 'string', placeholder: 'N', env: 'TASK_BROKER_DATABASE_POOL_SIZE', default: '10', description: 'PostgreSQL connections per replica' },
  'database-pool-timeout': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_DATABASE_POOL_TIMEOUT',
    default: '5s',
    description: 'How long a call may wait for a database connection before it fails with UNAVAILABLE',
  },
  'statement-timeout': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_STATEMENT_TIMEOUT', default: '30s', description: 'Longest a database statement may run' },
  'handshake-timeout': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_HANDSHAKE_TIMEOUT',
    default: '5s',
    description: 'A connection whose TLS handshake has not finished by then is closed',
  },
  'max-connections': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CONNECTIONS',
    default: 'auto',
    description: "Open gRPC connections at most; 'auto': 4096, or the file descriptor limit less 256 when that is lower",
  },
  'max-handshakes': { type: 'string', placeholder: 'N', env: 'TASK_BROKER_MAX_HANDSHAKES', default: '256', description: 'Connections in their TLS handshake at once at most; further ones are closed on accept' },
  'max-connection-idle': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_MAX_CONNECTION_IDLE',
    default: '5m',
    description: "A connection without a call for this long is closed (GOAWAY); '0s': never",
  },
  'max-connection-age': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_MAX_CONNECTION_AGE',
    default: '30m',
    description: "Connections are closed gracefully after about this long so clients rebalance over replicas (calls in flight get 5m); '0s': never",
  },
  'max-concurrent-streams': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CONCURRENT_STREAMS',
    default: '48',
    description: "Concurrent calls per connection (HTTP/2 streams): a caller's in-flight limit and some room to be told RESOURCE_EXHAUSTED; a client queues more itself",
  },
  'max-calls-per-caller': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CALLS_PER_CALLER',
    default: '32',
    description: 'Calls one SPIFFE ID may have in flight at once; beyond that RESOURCE_EXHAUSTED with a retry hint',
  },
  'max-active-calls': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_ACTIVE_CALLS',
    default: '64',
    description:
      'Calls that run at once in the replica; more wait their turn, callers served in turn, each caller at most an equal share among those active in the last second (alone, all of them), so a flood from one caller does not slow the others',
  },
  'caller-rate': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_CALLER_RATE',
    default: '0',
    description: 'Calls per second one SPIFFE ID may make (token bucket, burst of one second); 0: no rate limit',
  },
  'max-in-flight': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_IN_FLIGHT',
    default: '512',
    description: 'Calls in flight in the whole replica at once; beyond that UNAVAILABLE (load shedding)',
  },
};

export const serveSpec: CommandSpec = {
  name: 'serve',
  summary: 'Run the broker: gRPC over mTLS with X509-SVIDs.',
  options: {
    listen: { type: 'string', placeholder: 'HOST:PORT', env: 'TASK_BROKER_LISTEN', default: '0.0.0.0:8443', description: 'Address of the gRPC (mTLS) listener' },
    'http-listen': { type: 'string', placeholder: 'HOST:PORT', env: 'TASK_BROKER_HTTP_LISTEN', default: '0.0.0.0:8080', description: "Address of the HTTP listener serving /.well-known/jwks.json ('off' to disable)" },
    'workload-api': {
      type: 'string',
      placeholder: 'ADDRESS',
      env: SPIFFE_ENDPOINT_SOCKET,
      description:
        "SPIFFE Workload API endpoint (a SPIRE agent), e.g. unix:///run/spire/agent-sockets/api.sock: the broker's SVID and every trust bundle come from it, followed as they rotate. Replaces --svid-cert, --svid-key and --bundle",
    },
    'workload-api-timeout': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_WORKLOAD_API_TIMEOUT',
      default: '60s',
      description: 'How long to wait at start for the first SVID from the Workload API before giving up',
    },
    'workload-api-spiffe-id': {
      type: 'string',
      placeholder: 'ID',
      env: 'TASK_BROKER_WORKLOAD_API_SPIFFE_ID',
      description: "Serve with the Workload API's SVID for this SPIFFE ID (default: the first, the agent's default identity)",
    },
    'svid-cert': { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_SVID_CERT', description: "The broker's own X509-SVID certificate chain (PEM, leaf first); reloaded on change" },
    'svid-key': { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_SVID_KEY', description: "The private key of the broker's SVID (PEM); reloaded on change" },
    bundle: {
      type: 'string',
      multiple: true,
      placeholder: 'TRUST_DOMAIN=FILE',
      env: 'TASK_BROKER_BUNDLES',
      description: 'Trust bundle of a trust domain whose workloads may call (PEM or SPIFFE bundle JSON); reloaded on change',
    },
    policy: { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_POLICY', description: 'Policy document (YAML); reloaded on change, a broken new version keeps the last good one. Without it every task and admin request is denied' },
    ...storageOptions,
    migrate: { type: 'boolean', env: 'TASK_BROKER_MIGRATE', description: 'Apply pending database migrations at start (otherwise the broker refuses to start while any is pending)' },
    'kek-file': { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_KEK_FILE', description: 'Key-encryption key for the signing keys at rest: 32 random bytes, base64 (mode 0600)' },
    kek: { type: 'string', placeholder: 'BASE64', env: 'TASK_BROKER_KEK', description: 'The key-encryption key itself, base64 (prefer --kek-file or the env var to a flag)' },
    'token-alg': { type: 'string', placeholder: 'ALG', env: 'TASK_BROKER_TOKEN_ALG', default: 'ES256', description: 'Token signature algorithm: ES256 or EdDSA' },
    issuer: { type: 'string', placeholder: 'ISS', env: 'TASK_BROKER_ISSUER', description: "Token issuer (iss); default: the broker's SPIFFE ID" },
    'default-task-ttl': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_DEFAULT_TASK_TTL', default: '15m', description: 'Task lifetime when CreateTask gives none' },
    'max-task-ttl': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_MAX_TASK_TTL', default: '24h', description: 'Longest task lifetime a caller may ask for' },
    'default-token-ttl': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_DEFAULT_TOKEN_TTL', default: '5m', description: 'Token lifetime when IssueToken gives none' },
    'max-token-ttl': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_MAX_TOKEN_TTL', default: '15m', description: 'Longest token lifetime (never past the task expiry)' },
    'sweep-interval': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_SWEEP_INTERVAL', default: '30s', description: 'How often expired tasks are swept (safe in every replica)' },
    'token-retention': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_TOKEN_RETENTION', default: '168h', description: 'How long token rows are kept after they expire (audit events are kept)' },
    'file-poll-interval': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_FILE_POLL_INTERVAL', default: '5s', description: 'Backup poll interval for watched files (SVID, bundles)' },
    ...limitOptions,
    'shutdown-grace': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_SHUTDOWN_GRACE', default: '20s', description: 'How long in-flight calls may take to finish on SIGTERM' },
    'log-level': { type: 'string', placeholder: 'LEVEL', env: 'TASK_BROKER_LOG_LEVEL', default: 'info', description: 'trace, debug, info, warn, error or silent' },
  },
};

/** Workload API mode: the broker's SVID and all trust bundles come from a SPIRE agent. */
export interface WorkloadApiConfig {
  /** unix:///path/to/agent.sock (or unix:/path, tcp://IP:PORT). */
  address: string;
  /** How long startFromConfig waits for the first SVID. */
  timeoutMs: number;
  /** Serve with the SVID for this ID instead of the agent's default (first) one. */
  spiffeId?: string;
}

/**
 * Exactly one identity mode: files (svidCertPath, svidKeyPath and bundles) or the Workload API
 * (workloadApi, with the file fields absent).
 */
export interface ServeConfig {
  host: string;
  port: number;
  http?: { host: string; port: number };
  svidCertPath?: string;
  svidKeyPath?: string;
  bundles?: ReturnType<typeof parseBundleFileArg>[];
  workloadApi?: WorkloadApiConfig;
  policyPath?: string;
  databaseUrl?: string;
  dataDir: string;
  migrate: boolean;
  kek: { file?: string; base64?: string };
  tokenAlg: TokenAlg;
  issuer?: string;
  limits: { defaultTaskTtlSeconds: number; maxTaskTtlSeconds: number; defaultTokenTtlSeconds: number; maxTokenTtlSeconds: number };
  sweepIntervalMs: number;
  tokenRetentionSeconds: number;
  filePollIntervalMs: number;
  shutdownGraceMs: number;
  logLevel: string;
  /** Absent: one attempt. */
  databaseWaitMs?: number;
  /** Absent: the store's defaults. */
  database?: { poolSize: number; poolTimeoutMs: number; statementTimeoutMs: number };
  /** Absent fields: DEFAULT_CONNECTION_LIMITS. */
  connectionLimits?: Partial<ConnectionLimits>;
  /** Absent fields: DEFAULT_ADMISSION_LIMITS. */
  admission?: Partial<AdmissionLimits>;
}

/** The value of `name`, or its default from the serve spec (each default is written once, there). */
function optionText(values: ParsedCommand['values'], name: string): string {
  const text = stringOption(values, name) ?? serveSpec.options[name]?.default;
  if (text === undefined) throw new UsageError(`--${name} is required`);
  return text;
}

function durationOption(values: ParsedCommand['values'], name: string, { allowZero = false } = {}): number {
  const ms = parseDuration(optionText(values, name), `--${name}`);
  if (ms === 0 && !allowZero) throw new UsageError(`--${name} must be longer than 0s`);
  return ms;
}

function countOption(values: ParsedCommand['values'], name: string, { min = 1, max = 1_000_000 } = {}): number {
  const text = optionText(values, name);
  const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: a whole number from ${min} to ${max}, got "${text.slice(0, 32)}"`);
  return n;
}

/** 'auto': 4096, or the soft file descriptor limit less 256 (database, files, HTTP) when lower. */
function maxConnectionsOption(values: ParsedCommand['values']): number {
  if (optionText(values, 'max-connections') !== 'auto') return countOption(values, 'max-connections');
  return Math.max(64, Math.min(4096, softFileLimit() - 256));
}

function softFileLimit(): number {
  try {
    return openFilesLimit(readFileSync('/proc/self/limits', 'utf8')) ?? Infinity;
  } catch {
    return Infinity;
  }
}

const seconds = (values: ParsedCommand['values'], name: string) => {
  const ms = parseDuration(optionText(values, name), `--${name}`);
  if (ms < 1000 || ms % 1000 !== 0) throw new UsageError(`--${name}: whole seconds, at least 1s`);
  return ms / 1000;
};

/** The identity part of the configuration: files or the Workload API, never both. */
function identityConfig(values: ParsedCommand['values']): Pick<ServeConfig, 'svidCertPath' | 'svidKeyPath' | 'bundles' | 'workloadApi'> {
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
    const timeoutMs = parseDuration(optionText(values, 'workload-api-timeout'), '--workload-api-timeout');
    if (timeoutMs <= 0) throw new UsageError('--workload-api-timeout must be longer than 0s');
    return { workloadApi: { address: workloadApi, timeoutMs, ...(spiffeId !== undefined ? { spiffeId } : {}) } };
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
  return { svidCertPath, svidKeyPath, bundles };
}

export function serveConfig(parsed: ParsedCommand): ServeConfig {
  const { values } = parsed;
  const identity = identityConfig(values);
  const kekFile = stringOption(values, 'kek-file');
  const kekValue = stringOption(values, 'kek');
  if (!kekFile === !kekValue) {
    throw new UsageError('exactly one key-encryption key is required: --kek-file FILE or TASK_BROKER_KEK (generate one with: head -c 32 /dev/urandom | base64)');
  }
  const alg = stringOption(values, 'token-alg') ?? 'ES256';
  if (alg !== 'ES256' && alg !== 'EdDSA') throw new UsageError(`--token-alg: ES256 or EdDSA, not "${alg}"`);
  const httpListen = stringOption(values, 'http-listen') ?? '0.0.0.0:8080';
  const limits = {
    defaultTaskTtlSeconds: seconds(values, 'default-task-ttl'),
    maxTaskTtlSeconds: seconds(values, 'max-task-ttl'),
    defaultTokenTtlSeconds: seconds(values, 'default-token-ttl'),
    maxTokenTtlSeconds: seconds(values, 'max-token-ttl'),
  };
  if (limits.defaultTaskTtlSeconds > limits.maxTaskTtlSeconds) throw new UsageError('--default-task-ttl is longer than --max-task-ttl');
  if (limits.defaultTokenTtlSeconds > limits.maxTokenTtlSeconds) throw new UsageError('--default-token-ttl is longer than --max-token-ttl');
  return {
    ...parseListenAddress(stringOption(values, 'listen') ?? '0.0.0.0:8443'),
    http: httpListen === 'off' ? undefined : parseListenAddress(httpListen),
    ...identity,
    policyPath: stringOption(values, 'policy'),
    databaseUrl: stringOption(values, 'database-url'),
    dataDir: stringOption(values, 'data-dir') ?? './task-broker-data',
    migrate: values.migrate === true || values.migrate === 'true',
    kek: kekFile ? { file: kekFile } : { base64: kekValue },
    tokenAlg: alg,
    issuer: stringOption(values, 'issuer'),
    limits,
    sweepIntervalMs: durationOption(values, 'sweep-interval', { allowZero: true }),
    tokenRetentionSeconds: seconds(values, 'token-retention'),
    filePollIntervalMs: durationOption(values, 'file-poll-interval', { allowZero: true }),
    shutdownGraceMs: durationOption(values, 'shutdown-grace', { allowZero: true }),
    logLevel: stringOption(values, 'log-level') ?? 'info',
    databaseWaitMs: durationOption(values, 'database-wait', { allowZero: true }),
    database: {
      poolSize: countOption(values, 'database-pool-size', { max: 1_000 }),
      poolTimeoutMs: durationOption(values, 'database-pool-timeout'),
      statementTimeoutMs: durationOption(values, 'statement-timeout'),
    },
    connectionLimits: {
      handshakeTimeoutMs: durationOption(values, 'handshake-timeout'),
      maxConnections: maxConnectionsOption(values),
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
  };
}

/** What startFromConfig starts: the broker, plus the Workload API source when it is in use (readiness, metrics). */
export interface ServedBroker extends RunningTaskBroker {
  /** Present in Workload API mode: ready(), status() and the bundle set. */
  readonly workloadApi?: WorkloadApiSource;
}

interface IdentitySetup {
  identity: X509SvidSource;
  bundles: TrustBundleSet;
  workloadApi?: WorkloadApiSource;
  close(): void;
}

/** The broker's SVID and trust bundles: from the Workload API (after its first SVID) or from watched files. */
async function setUpIdentity(config: ServeConfig, logger: Logger): Promise<IdentitySetup> {
  if (config.workloadApi) {
    if (config.svidCertPath || config.svidKeyPath || (config.bundles?.length ?? 0) > 0) {
      throw new Error('the Workload API and SVID/bundle files cannot be combined: the Workload API provides both');
    }
    const { address, timeoutMs, spiffeId } = config.workloadApi;
    const source = await WorkloadApiSource.connect({ address, logger, ...(spiffeId !== undefined ? { spiffeId } : {}) });
    try {
      logger.info({ workloadApi: address, timeoutMs }, 'waiting for the first X509-SVID from the Workload API');
      await source.waitUntilReady(timeoutMs);
    } catch (err) {
      source.close();
      throw err;
    }
    return { identity: source, bundles: source.bundles, workloadApi: source, close: () => source.close() };
  }
  if (!config.svidCertPath || !config.svidKeyPath) throw new Error("the broker's own SVID is required: svidCertPath and svidKeyPath, or workloadApi");
  const source = await FileX509Source.load({
    certPath: config.svidCertPath,
    keyPath: config.svidKeyPath,
    bundles: config.bundles ?? [],
    logger,
    pollIntervalMs: config.filePollIntervalMs,
  });
  return { identity: source, bundles: source.bundles, close: () => source.close() };
}

/**
 * Starts the whole broker from a ServeConfig: SVID and bundles in place (in Workload API mode,
 * after the first SVID arrived, within workloadApi.timeoutMs), database opened, keys ready.
 */
export async function startFromConfig(config: ServeConfig, logger: Logger): Promise<ServedBroker> {
  const kek = await loadKek(config.kek);
  let policy: FilePolicySource | undefined;
  let setup: IdentitySetup | undefined;
  try {
    if (config.policyPath) policy = await FilePolicySource.load(config.policyPath, { logger, pollIntervalMs: config.filePollIntervalMs });
    setup = await setUpIdentity(config, logger);
    const { identity, bundles } = setup;
    const store = await openStore({
      databaseUrl: config.databaseUrl,
      dataDir: config.dataDir,
      connectWaitMs: config.databaseWaitMs,
      maxConnections: config.database?.poolSize,
      poolTimeoutMs: config.database?.poolTimeoutMs,
      statementTimeoutMs: config.database?.statementTimeoutMs,
      onConnectionProblem: ({ phase, message, attempt, retryInMs }) =>
        phase === 'start'
          ? logger.warn({ err: message, attempt, retryInMs }, 'database not reachable yet; retrying')
          : logger.warn({ err: message }, 'database connection failed; the pool replaces it'),
    });
    const broker = await startTaskBroker({
      logger,
      identity,
      bundles,
      store,
      kek,
      policy,
      host: config.host,
      port: config.port,
      http: config.http,
      migrate: config.migrate,
      tokenAlg: config.tokenAlg,
      issuer: config.issuer,
      limits: config.limits,
      sweepIntervalMs: config.sweepIntervalMs,
      tokenRetentionSeconds: config.tokenRetentionSeconds,
      connectionLimits: config.connectionLimits,
      admission: config.admission,
    });
    const opened = setup;
    return {
      ...broker,
      ...(opened.workloadApi ? { workloadApi: opened.workloadApi } : {}),
      async close(graceMs?: number) {
        await broker.close(graceMs);
        opened.close();
        policy?.close();
      },
    };
  } catch (err) {
    setup?.close();
    policy?.close();
    throw err;
  }
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
