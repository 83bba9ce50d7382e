/**
 * The broker's identity: its own SVID, which it serves with, and the trust bundles it verifies
 * callers against. Both come from files (reloaded on change) or from the Workload API.
 */
import type { ObservableBundles } from '../observability/metric-inputs.js';
import type { Logger } from '../observability/logger.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import { FileX509Source } from '../spiffe/file-x509-source.js';
import { WorkloadApiSource } from '../spiffe/workload-api-source.js';
import type { X509Source } from '../spiffe/x509-source.js';
import type { IdentityConfig } from './config.js';

/** The trust bundles as the gRPC server verifies with them, plus their changes per trust domain (for metrics). */
export type TrustBundles = X509BundleSource & ObservableBundles;

/** The SVID and bundles from the Workload API, once its first SVID arrived (within `timeoutMs`). */
async function fromWorkloadApi(config: Extract<IdentityConfig, { kind: 'workload-api' }>, logger: Logger): Promise<X509Source> {
  const { address, timeoutMs, spiffeId } = config;
  const source = await WorkloadApiSource.connect({ address, logger, ...(spiffeId !== undefined ? { spiffeId } : {}) });
  try {
    logger.info({ workloadApi: address, timeoutMs }, 'waiting for the first X509-SVID from the Workload API');
    await source.waitUntilReady(timeoutMs);
  } catch (err) {
    source.close();
    throw err;
  }
  return source;
}

function fromFiles(config: Extract<IdentityConfig, { kind: 'files' }>, logger: Logger, pollIntervalMs: number): Promise<X509Source> {
  // FileX509Source refuses bundles that leave out the broker's own trust domain (the Workload API source does too).
  return FileX509Source.open({ certPath: config.svidCertPath, keyPath: config.svidKeyPath, bundles: config.bundles, logger, pollIntervalMs });
}

/** The broker's SVID and trust bundles in place: from the Workload API (after its first SVID) or from watched files. */
export function setUpIdentity(config: IdentityConfig, options: { logger: Logger; filePollIntervalMs: number }): Promise<X509Source> {
  return config.kind === 'workload-api' ? fromWorkloadApi(config, options.logger) : fromFiles(config, options.logger, options.filePollIntervalMs);
}
