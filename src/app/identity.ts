/**
 * The broker's identity: its own SVID, which it serves with, and the trust bundles it verifies
 * callers against. Both come from files (reloaded on change) or from the Workload API.
 */
import type { Logger } from '../observability/logger.js';
import { FileX509Source } from '../spiffe/file-x509-source.js';
import { WorkloadApiSource } from '../spiffe/workload-api-source.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import type { SvidServerOptions } from '../transport/svid-server.js';
import type { IdentityConfig } from './config.js';

/** The broker's SVID as the gRPC server serves it; a streaming source also says whether it is ready and how its stream is. */
export type SvidSource = X509SvidSource;

/** The trust bundles as the gRPC server verifies with them, plus their changes per trust domain (for metrics). */
export type TrustBundles = SvidServerOptions['bundles'] & {
  trustDomains(): string[];
  onChange(listener: (trustDomain: string | undefined) => void): () => void;
};

export interface BrokerIdentity {
  svid: SvidSource;
  bundles: TrustBundles;
  /** Stops following files or the Workload API. */
  close(): void;
}

/** The SVID and bundles from the Workload API, once its first SVID arrived (within `timeoutMs`). */
async function fromWorkloadApi(config: Extract<IdentityConfig, { kind: 'workload-api' }>, logger: Logger): Promise<BrokerIdentity> {
  const { address, timeoutMs, spiffeId } = config;
  const source = await WorkloadApiSource.connect({ address, logger, ...(spiffeId !== undefined ? { spiffeId } : {}) });
  try {
    logger.info({ workloadApi: address, timeoutMs }, 'waiting for the first X509-SVID from the Workload API');
    await source.waitUntilReady(timeoutMs);
  } catch (err) {
    source.close();
    throw err;
  }
  return { svid: source, bundles: source.bundles, close: () => source.close() };
}

async function fromFiles(config: Extract<IdentityConfig, { kind: 'files' }>, logger: Logger, pollIntervalMs: number): Promise<BrokerIdentity> {
  // FileX509Source refuses bundles that leave out the broker's own trust domain (the Workload API source does too).
  const source = await FileX509Source.open({ certPath: config.svidCertPath, keyPath: config.svidKeyPath, bundles: config.bundles, logger, pollIntervalMs });
  return { svid: source, bundles: source.bundles, close: () => source.close() };
}

/** The broker's SVID and trust bundles in place: from the Workload API (after its first SVID) or from watched files. */
export function setUpIdentity(config: IdentityConfig, options: { logger: Logger; filePollIntervalMs: number }): Promise<BrokerIdentity> {
  return config.kind === 'workload-api' ? fromWorkloadApi(config, options.logger) : fromFiles(config, options.logger, options.filePollIntervalMs);
}
