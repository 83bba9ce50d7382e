/**
 * `task-broker serve`: the broker as deployed. Flags and environment variables are listed in
 * the spec below and in the README's configuration reference.
 */
import { createLogger, type Logger } from '../observability/logger.js';
import { startBroker, type RunningBroker } from '../server.js';
import { TrustBundleSet } from '../spiffe/bundle.js';
import { parseBundleFileArg, watchBundleFiles } from '../spiffe/bundle-files.js';
import { FileServerIdentity } from '../transport/server-identity.js';
import { listOption, parseDuration, parseListenAddress, stringOption, UsageError, type CommandSpec, type ParsedCommand } from './options.js';

export const serveSpec: CommandSpec = {
  name: 'serve',
  summary: 'Run the broker: gRPC over mTLS with X509-SVIDs.',
  options: {
    listen: { type: 'string', placeholder: 'HOST:PORT', env: 'TASK_BROKER_LISTEN', default: '0.0.0.0:8443', description: 'Address of the gRPC (mTLS) listener' },
    'svid-cert': { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_SVID_CERT', description: "The broker's own X509-SVID certificate chain (PEM, leaf first); reloaded on change" },
    'svid-key': { type: 'string', placeholder: 'FILE', env: 'TASK_BROKER_SVID_KEY', description: "The private key of the broker's SVID (PEM); reloaded on change" },
    bundle: {
      type: 'string',
      multiple: true,
      placeholder: 'TRUST_DOMAIN=FILE',
      env: 'TASK_BROKER_BUNDLES',
      description: 'Trust bundle of a trust domain whose workloads may call (PEM or SPIFFE bundle JSON); reloaded on change',
    },
    'database-url': { type: 'string', placeholder: 'URL', env: 'TASK_BROKER_DATABASE_URL', description: 'PostgreSQL connection URL; when absent, embedded PGlite in --data-dir' },
    'data-dir': { type: 'string', placeholder: 'DIR', env: 'TASK_BROKER_DATA_DIR', default: './task-broker-data', description: 'Directory for the embedded database' },
    'file-poll-interval': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_FILE_POLL_INTERVAL', default: '5s', description: 'Backup poll interval for watched files (SVID, bundles)' },
    'shutdown-grace': { type: 'string', placeholder: 'DURATION', env: 'TASK_BROKER_SHUTDOWN_GRACE', default: '20s', description: 'How long in-flight calls may take to finish on SIGTERM' },
    'log-level': { type: 'string', placeholder: 'LEVEL', env: 'TASK_BROKER_LOG_LEVEL', default: 'info', description: 'trace, debug, info, warn, error or silent' },
  },
};

export interface ServeConfig {
  host: string;
  port: number;
  svidCertPath: string;
  svidKeyPath: string;
  bundles: ReturnType<typeof parseBundleFileArg>[];
  databaseUrl?: string;
  dataDir: string;
  filePollIntervalMs: number;
  shutdownGraceMs: number;
  logLevel: string;
}

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
  return {
    ...parseListenAddress(stringOption(values, 'listen') ?? '0.0.0.0:8443'),
    svidCertPath,
    svidKeyPath,
    bundles,
    databaseUrl: stringOption(values, 'database-url'),
    dataDir: stringOption(values, 'data-dir') ?? './task-broker-data',
    filePollIntervalMs: parseDuration(stringOption(values, 'file-poll-interval') ?? '5s', '--file-poll-interval'),
    shutdownGraceMs: parseDuration(stringOption(values, 'shutdown-grace') ?? '20s', '--shutdown-grace'),
    logLevel: stringOption(values, 'log-level') ?? 'info',
  };
}

/** Starts the broker from a ServeConfig; returns it and a function that releases the file watchers. */
export async function startFromConfig(config: ServeConfig, logger: Logger): Promise<RunningBroker> {
  const identity = await FileServerIdentity.load(config.svidCertPath, config.svidKeyPath, { logger, pollIntervalMs: config.filePollIntervalMs });
  const bundles = new TrustBundleSet();
  let bundleWatch: { close(): void } | undefined;
  try {
    bundleWatch = await watchBundleFiles(bundles, config.bundles, { logger, pollIntervalMs: config.filePollIntervalMs });
    const broker = await startBroker({ logger, identity, bundles, host: config.host, port: config.port });
    return {
      ...broker,
      async close(graceMs?: number) {
        await broker.close(graceMs);
        identity.close();
        bundleWatch?.close();
      },
    };
  } catch (err) {
    identity.close();
    bundleWatch?.close();
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
