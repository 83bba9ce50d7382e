/**
 * `task-broker serve`: the broker as deployed. Flags and environment variables are listed in
 * the spec below and in the README's configuration reference.
 */
import { createLogger, type Logger } from '../observability/logger.js';
import { startTaskBroker, type RunningTaskBroker } from '../server.js';
import { TrustBundleSet } from '../spiffe/bundle.js';
import { parseBundleFileArg, watchBundleFiles } from '../spiffe/bundle-files.js';
import { openStore } from '../store/database.js';
import { loadKek } from '../tokens/kek.js';
import type { TokenAlg } from '../tokens/keyring.js';
import { FilePolicySource } from '../policy/policy-source.js';
import { FileServerIdentity } from '../transport/server-identity.js';
import { listOption, parseDuration, parseListenAddress, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from './options.js';

/** Where the data lives: shared by serve and migrate. */
export const storageOptions: Record<string, OptionSpec> = {
  'database-url': { type: 'string', placeholder: 'URL', env: 'TASK_BROKER_DATABASE_URL', description: 'PostgreSQL connection URL (postgres://…); when absent, embedded PGlite in --data-dir' },
  'data-dir': { type: 'string', placeholder: 'DIR', env: 'TASK_BROKER_DATA_DIR', default: './task-broker-data', description: 'Directory of the embedded PGlite database' },
};

export const serveSpec: CommandSpec = {
  name: 'serve',
  summary: 'Run the broker: gRPC over mTLS with X509-SVIDs.',
  options: {
    listen: { type: 'string', placeholder: 'HOST:PORT', env: 'TASK_BROKER_LISTEN', default: '0.0.0.0:8443', description: 'Address of the gRPC (mTLS) listener' },
    'http-listen': { type: 'string', placeholder: 'HOST:PORT', env: 'TASK_BROKER_HTTP_LISTEN', default: '0.0.0.0:8080', description: "Address of the HTTP listener serving /.well-known/jwks.json ('off' to disable)" },
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
    'shutdown-grace': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_SHUTDOWN_GRACE', default: '20s', description: 'How long in-flight calls may take to finish on SIGTERM' },
    'log-level': { type: 'string', placeholder: 'LEVEL', env: 'TASK_BROKER_LOG_LEVEL', default: 'info', description: 'trace, debug, info, warn, error or silent' },
  },
};

export interface ServeConfig {
  host: string;
  port: number;
  http?: { host: string; port: number };
  svidCertPath: string;
  svidKeyPath: string;
  bundles: ReturnType<typeof parseBundleFileArg>[];
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
}

const seconds = (values: ParsedCommand['values'], name: string, fallback: string) => {
  const ms = parseDuration(stringOption(values, name) ?? fallback, `--${name}`);
  if (ms < 1000 || ms % 1000 !== 0) throw new UsageError(`--${name}: whole seconds, at least 1s`);
  return ms / 1000;
};

export function serveConfig(parsed: ParsedCommand): ServeConfig {
  const { values } = parsed;
  const svidCertPath = stringOption(values, 'svid-cert');
  const svidKeyPath = stringOption(values, 'svid-key');
  if (!svidCertPath || !svidKeyPath) {
    throw new UsageError("the broker's own SVID is required: --svid-cert and --svid-key (or TASK_BROKER_SVID_CERT and TASK_BROKER_SVID_KEY)");
  }
  const bundles = listOption(values, 'bundle').map((arg) => {
    try {
      return parseBundleFileArg(arg);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  });
  if (bundles.length === 0) {
    throw new UsageError('at least one --bundle TRUST_DOMAIN=FILE is required: with no trust bundle no caller can be verified');
  }
  const kekFile = stringOption(values, 'kek-file');
  const kekValue = stringOption(values, 'kek');
  if (!kekFile === !kekValue) {
    throw new UsageError('exactly one key-encryption key is required: --kek-file FILE or TASK_BROKER_KEK (generate one with: head -c 32 /dev/urandom | base64)');
  }
  const alg = stringOption(values, 'token-alg') ?? 'ES256';
  if (alg !== 'ES256' && alg !== 'EdDSA') throw new UsageError(`--token-alg: ES256 or EdDSA, not "${alg}"`);
  const httpListen = stringOption(values, 'http-listen') ?? '0.0.0.0:8080';
  const limits = {
    defaultTaskTtlSeconds: seconds(values, 'default-task-ttl', '15m'),
    maxTaskTtlSeconds: seconds(values, 'max-task-ttl', '24h'),
    defaultTokenTtlSeconds: seconds(values, 'default-token-ttl', '5m'),
    maxTokenTtlSeconds: seconds(values, 'max-token-ttl', '15m'),
  };
  if (limits.defaultTaskTtlSeconds > limits.maxTaskTtlSeconds) throw new UsageError('--default-task-ttl is longer than --max-task-ttl');
  if (limits.defaultTokenTtlSeconds > limits.maxTokenTtlSeconds) throw new UsageError('--default-token-ttl is longer than --max-token-ttl');
  return {
    ...parseListenAddress(stringOption(values, 'listen') ?? '0.0.0.0:8443'),
    http: httpListen === 'off' ? undefined : parseListenAddress(httpListen),
    svidCertPath,
    svidKeyPath,
    bundles,
    policyPath: stringOption(values, 'policy'),
    databaseUrl: stringOption(values, 'database-url'),
    dataDir: stringOption(values, 'data-dir') ?? './task-broker-data',
    migrate: values.migrate === true || values.migrate === 'true',
    kek: kekFile ? { file: kekFile } : { base64: kekValue },
    tokenAlg: alg,
    issuer: stringOption(values, 'issuer'),
    limits,
    sweepIntervalMs: parseDuration(stringOption(values, 'sweep-interval') ?? '30s', '--sweep-interval'),
    tokenRetentionSeconds: seconds(values, 'token-retention', '168h'),
    filePollIntervalMs: parseDuration(stringOption(values, 'file-poll-interval') ?? '5s', '--file-poll-interval'),
    shutdownGraceMs: parseDuration(stringOption(values, 'shutdown-grace') ?? '20s', '--shutdown-grace'),
    logLevel: stringOption(values, 'log-level') ?? 'info',
  };
}

/** Starts the whole broker from a ServeConfig: files watched, database opened, keys ready. */
export async function startFromConfig(config: ServeConfig, logger: Logger): Promise<RunningTaskBroker> {
  const kek = await loadKek(config.kek);
  const identity = await FileServerIdentity.load(config.svidCertPath, config.svidKeyPath, { logger, pollIntervalMs: config.filePollIntervalMs });
  const bundles = new TrustBundleSet();
  let bundleWatch: { close(): void } | undefined;
  let policy: FilePolicySource | undefined;
  try {
    if (config.policyPath) policy = await FilePolicySource.load(config.policyPath, { logger, pollIntervalMs: config.filePollIntervalMs });
    bundleWatch = await watchBundleFiles(bundles, config.bundles, { logger, pollIntervalMs: config.filePollIntervalMs });
    const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
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
    });
    return {
      ...broker,
      async close(graceMs?: number) {
        await broker.close(graceMs);
        identity.close();
        bundleWatch?.close();
        policy?.close();
      },
    };
  } catch (err) {
    identity.close();
    bundleWatch?.close();
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
