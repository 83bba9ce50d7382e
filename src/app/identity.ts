/**
 * The broker's identity: its own SVID, which it serves with, and the trust bundles it verifies
 * callers against. Both come from files (reloaded on change) or from the Workload API.
 */
import type { Logger } from '../observability/logger.js';
import { TrustBundleSet } from '../spiffe/bundle.js';
import { watchBundleFiles } from '../spiffe/bundle-files.js';
import { WorkloadApiSource } from '../spiffe/workload-api-source.js';
import { FileServerIdentity } from '../transport/server-identity.js';
import type { SvidServerOptions } from '../transport/svid-server.js';
import type { IdentityConfig } from './config.js';

/** What a streaming SVID source says about its stream (the Workload API status fits). */
export interface SvidStreamStatus {
  readonly connected: boolean;
  readonly lastSvidUpdate: Date | undefined;
}

/** The broker's SVID as the gRPC server serves it, plus what a streaming source can say about itself. */
export type SvidSource = SvidServerOptions['identity'] & {
  /** Whether the source can serve now (a stream: an SVID arrived and has not expired); absent: current() says it all. */
  ready?(): boolean;
  /** Non-secret facts about the stream: shown in readiness, and in metrics (connected, last update). */
  status?(): SvidStreamStatus;
};

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
  const svid = await FileServerIdentity.load(config.svidCertPath, config.svidKeyPath, { logger, pollIntervalMs });
  const bundles = new TrustBundleSet();
  try {
    const watch = await watchBundleFiles(bundles, config.bundles, { logger, pollIntervalMs });
    // Without its own trust domain's bundle the broker would start, report ready, and refuse
    // every workload of its own trust domain. (The Workload API source refuses this state too.)
    const own = svid.current()?.spiffeId.trustDomain;
    if (own !== undefined && !bundles.getX509Bundle(own)) {
      watch.close();
      throw new Error(
        `no trust bundle covers the broker's own trust domain "${own}" (its SVID is ${svid.current()?.spiffeId.toString() ?? ''}); ` +
          `bundles were given for: ${bundles.trustDomains().join(', ') || 'none'}. Add --bundle ${own}=FILE`,
      );
    }
    return {
      svid,
      bundles,
      close: () => {
        svid.close();
        watch.close();
      },
    };
  } catch (err) {
    svid.close();
    throw err;
  }
}

/** The broker's SVID and trust bundles in place: from the Workload API (after its first SVID) or from watched files. */
export function setUpIdentity(config: IdentityConfig, options: { logger: Logger; filePollIntervalMs: number }): Promise<BrokerIdentity> {
  return config.kind === 'workload-api' ? fromWorkloadApi(config, options.logger) : fromFiles(config, options.logger, options.filePollIntervalMs);
}
