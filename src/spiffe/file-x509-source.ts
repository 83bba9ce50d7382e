/**
 * The broker's SVID and trust bundles from files (`--svid-cert`, `--svid-key`, `--bundle`), each
 * followed as it changes (also through rename-over and `..data` symlink swaps). A new version
 * that does not parse leaves the last good one in force and says why in the log.
 */
import { WatchedValue } from '../files/watched-value.js';
import type { Logger } from '../observability/logger.js';
import { TrustBundleSet } from './bundle.js';
import { watchBundleFiles, type BundleFile } from './bundle-files.js';
import { svidFilesMessage, type SvidFiles } from './key-pair.js';
import { tlsIdentityFrom, type TlsIdentity, type X509Source, type X509SvidSource } from './x509-source.js';

export interface FileSourceOptions {
  logger: Logger;
  /** Backup poll interval for the files (default 5 s); 0 disables polling. */
  pollIntervalMs?: number;
}

/** The broker's SVID from a certificate chain file and a key file, reloaded when either changes. */
export class FileX509SvidSource implements X509SvidSource {
  readonly #svid: WatchedValue<TlsIdentity>;
  readonly #files: SvidFiles;

  protected constructor(certPath: string, keyPath: string, options: FileSourceOptions) {
    this.#files = { cert: certPath, key: keyPath };
    const log = options.logger.child({ certPath, keyPath });
    this.#svid = new WatchedValue([certPath, keyPath], ([cert = '', key = '']) => tlsIdentityFrom(cert, key), {
      pollIntervalMs: options.pollIntervalMs,
      onError: (err, during) => {
        if (during !== 'reload') {
          log.error({ err: err.message }, 'server SVID change listener failed');
          return;
        }
        const problem = svidFilesMessage(err, this.#files);
        log.error({ err: err.message }, `server SVID reload failed; keeping the last good SVID${problem ? `: ${problem}` : ''}`);
      },
    });
    this.#svid.onChange((identity) => {
      log.info({ spiffeId: identity.spiffeId.toString(), notAfter: identity.notAfter.toISOString() }, 'server SVID reloaded');
    });
  }

  /** Loads the pair (throwing saying why it is unusable) and follows both files. */
  static async load(certPath: string, keyPath: string, options: FileSourceOptions): Promise<FileX509SvidSource> {
    const source = new FileX509SvidSource(certPath, keyPath, options);
    await source.loaded();
    return source;
  }

  /** Resolves once the first pair loaded; rejects saying why it is unusable (ready() stopped following the files). */
  protected async loaded(): Promise<void> {
    try {
      await this.#svid.ready();
    } catch (err) {
      // A key that is not the certificate's, or a file that is not what it should be: one line naming the file.
      const problem = svidFilesMessage(err, this.#files);
      throw new Error(problem ?? `cannot load the SVID from ${this.#files.cert} and ${this.#files.key}: ${(err as Error).message}`, { cause: err });
    }
  }

  current(): TlsIdentity {
    return this.#svid.current();
  }

  onChange(listener: (identity: TlsIdentity) => void): () => void {
    return this.#svid.onChange(listener);
  }

  close(): void {
    this.#svid.close();
  }
}

export interface FileX509SourceOptions extends FileSourceOptions {
  certPath: string;
  keyPath: string;
  /** One file per trust domain; the broker's own must be among them. */
  bundles: readonly BundleFile[];
}

/** An X509Source from files: the SVID pair and one bundle file per trusted trust domain. */
export class FileX509Source extends FileX509SvidSource implements X509Source {
  readonly bundles = new TrustBundleSet();
  #bundleFiles: { close(): void } | undefined;

  /** Loads the SVID, then every bundle; throws if any first load fails or no bundle covers the SVID's trust domain. */
  static async open(options: FileX509SourceOptions): Promise<FileX509Source> {
    const source = new FileX509Source(options.certPath, options.keyPath, options);
    await source.loaded();
    try {
      source.#bundleFiles = await watchBundleFiles(source.bundles, options.bundles, options);
      // Without its own trust domain's bundle the broker would start, report ready, and refuse
      // every workload of its own trust domain. (The Workload API source refuses this state too.)
      const own = source.current().spiffeId;
      if (!source.bundles.getX509Bundle(own.trustDomain)) {
        throw new Error(
          `no trust bundle covers the broker's own trust domain "${own.trustDomain}" (its SVID is ${own.toString()}); ` +
            `bundles were given for: ${source.bundles.trustDomains().join(', ') || 'none'}. Add --bundle ${own.trustDomain}=FILE`,
        );
      }
      return source;
    } catch (err) {
      source.close();
      throw err;
    }
  }

  override close(): void {
    super.close();
    this.#bundleFiles?.close();
  }
}
