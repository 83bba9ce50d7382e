/**
 * Where a workload's X509-SVID and trust bundles come from, ready to use: the SPIFFE Workload API
 * (a SPIRE agent) or files reloaded on change. Both return the project's X509Source
 * implementations once they hold an SVID and the bundle of its trust domain; pass them to
 * x509SourceCredentials or connectTaskBroker, and close them when done.
 */
import { readFile } from 'node:fs/promises';
import { silentLogger, type Logger } from '../observability/logger.js';
import { parsePemCertificates } from '../spiffe/certificate.js';
import { FileX509Source } from '../spiffe/file-x509-source.js';
import { SpiffeId } from '../spiffe/id.js';
import { WorkloadApiSource } from '../spiffe/workload-api-source.js';
import type { TlsIdentity } from '../spiffe/x509-source.js';

export { FileX509Source, WorkloadApiSource };

export interface WorkloadApiX509SourceOptions {
  /** `unix:///path/agent.sock` or `tcp://IP:PORT`; default: the SPIFFE_ENDPOINT_SOCKET environment variable. */
  address?: string;
  /** Use the SVID with this SPIFFE ID rather than the agent's first (default) one. */
  spiffeId?: string;
  /** How long to wait for the first SVID and bundle (default 10 s). */
  timeoutMs?: number;
  /** Default: a logger that drops everything. */
  logger?: Logger;
}

/** Resolves once `source` has the bundle of `identity`'s trust domain, or rejects at `deadline`. */
function ownBundle(source: WorkloadApiSource, identity: TlsIdentity, deadline: number): Promise<void> {
  const td = identity.spiffeId.trustDomain;
  if (source.bundles.getX509Bundle(td)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const off = source.bundles.onChange(() => {
      if (!source.bundles.getX509Bundle(td)) return;
      clearTimeout(timer);
      off();
      resolve();
    });
    const timer = setTimeout(
      () => {
        off();
        reject(new Error(`the Workload API at ${source.address.uri} sent an SVID for ${identity.spiffeId.toString()} but no bundle for ${td}`));
      },
      Math.max(0, deadline - Date.now()),
    );
  });
}

/**
 * Connects to the Workload API and resolves once the first usable SVID and its trust domain's
 * bundle arrived; rejects after `timeoutMs` saying what was last seen. The source keeps following
 * rotations until closed.
 */
export async function workloadApiX509Source(options: WorkloadApiX509SourceOptions = {}): Promise<WorkloadApiSource> {
  const address = options.address ?? process.env.SPIFFE_ENDPOINT_SOCKET;
  if (!address) throw new Error('workloadApiX509Source: no address given and SPIFFE_ENDPOINT_SOCKET is not set');
  const timeoutMs = options.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  const source = await WorkloadApiSource.connect({
    address,
    logger: options.logger ?? silentLogger(),
    ...(options.spiffeId ? { spiffeId: options.spiffeId } : {}),
  });
  try {
    const identity = await source.waitUntilReady(timeoutMs);
    await ownBundle(source, identity, deadline);
    return source;
  } catch (err) {
    source.close();
    throw err;
  }
}

export interface FileX509SourceOptions {
  /** PEM certificate chain, leaf first. */
  certFile: string;
  /** PEM private key (PKCS#8). */
  keyFile: string;
  /** One bundle file (PEM or SPIFFE bundle JSON) per trust domain: `{ 'example.org': '/path/bundle.pem' }`. */
  bundleFiles?: Record<string, string>;
  /** The bundle of the SVID's own trust domain, when it is the only one needed. */
  bundleFile?: string;
  /** Backup poll interval for the files (default 5 s; they are watched too); 0: watch only. */
  pollIntervalMs?: number;
  /** Default: a logger that drops everything. */
  logger?: Logger;
}

/** The trust domain of the SPIFFE ID in the leaf of a PEM chain file. */
async function trustDomainOf(certFile: string): Promise<string> {
  const [leaf] = parsePemCertificates(await readFile(certFile, 'utf8'));
  const uri = leaf?.uriSans[0];
  if (!uri) throw new Error(`${certFile}: the leaf certificate has no SPIFFE ID`);
  return SpiffeId.parse(uri).trustDomain;
}

/** Loads the SVID and bundles (throwing saying why they are unusable) and reloads each file when it changes. */
export async function fileX509Source(options: FileX509SourceOptions): Promise<FileX509Source> {
  const files = { ...options.bundleFiles };
  if (options.bundleFile !== undefined) {
    const td = await trustDomainOf(options.certFile);
    if (files[td] !== undefined && files[td] !== options.bundleFile) throw new Error(`fileX509Source: two bundle files for ${td}`);
    files[td] = options.bundleFile;
  }
  if (Object.keys(files).length === 0) throw new Error('fileX509Source: give bundleFile or bundleFiles');
  return FileX509Source.open({
    certPath: options.certFile,
    keyPath: options.keyFile,
    bundles: Object.entries(files).map(([trustDomain, path]) => ({ trustDomain, path })),
    logger: options.logger ?? silentLogger(),
    ...(options.pollIntervalMs === undefined ? {} : { pollIntervalMs: options.pollIntervalMs }),
  });
}
