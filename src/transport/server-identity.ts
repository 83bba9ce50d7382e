/**
 * The broker's own X509-SVID, which it presents to every client.
 *
 * A source hands out the current certificate chain and key and announces replacements; the
 * TLS server swaps its secure context on each one, so new connections get the new SVID and
 * open connections carry on. Files are one source; the Workload API is another.
 */
import { EventEmitter } from 'node:events';
import { createSecureContext } from 'node:tls';
import type { Logger } from '../observability/logger.js';
import { WatchedFiles } from '../files/watched-files.js';
import { parsePemCertificates } from '../spiffe/certificate.js';
import { SpiffeId } from '../spiffe/id.js';

export interface TlsIdentity {
  /** PEM: leaf first, then intermediates. */
  readonly certChainPem: string;
  readonly keyPem: string;
  readonly spiffeId: SpiffeId;
  readonly notAfter: Date;
}

export interface ServerIdentitySource {
  /** The current identity, or undefined until the first one arrives. */
  current(): TlsIdentity | undefined;
  onChange(listener: (identity: TlsIdentity) => void): () => void;
}

/** Checks that a certificate chain and key form a usable SVID for serving; throws saying why not. */
export function tlsIdentityFrom(certChainPem: string, keyPem: string, now = new Date()): TlsIdentity {
  const [leaf] = parsePemCertificates(certChainPem);
  if (!leaf) throw new Error('certificate chain is empty');
  if (leaf.uriSans.length !== 1) {
    throw new Error(`server certificate must have exactly one URI SAN (its SPIFFE ID), found ${leaf.uriSans.length}`);
  }
  const spiffeId = SpiffeId.parse(leaf.uriSans[0] ?? '');
  if (leaf.notAfter.getTime() <= now.getTime()) {
    throw new Error(`server certificate for ${spiffeId.toString()} expired at ${leaf.notAfter.toISOString()}`);
  }
  try {
    createSecureContext({ cert: certChainPem, key: keyPem }); // fails when the key does not match the certificate
  } catch (err) {
    throw new Error(`server certificate and key do not form a usable pair: ${(err as Error).message}`);
  }
  return { certChainPem, keyPem, spiffeId, notAfter: leaf.notAfter };
}

/** A fixed identity; for tests and the demo. */
export class StaticServerIdentity implements ServerIdentitySource {
  readonly #events = new EventEmitter();
  #identity: TlsIdentity;

  constructor(identity: TlsIdentity) {
    this.#identity = identity;
  }

  current(): TlsIdentity {
    return this.#identity;
  }

  set(identity: TlsIdentity): void {
    this.#identity = identity;
    this.#events.emit('change', identity);
  }

  onChange(listener: (identity: TlsIdentity) => void): () => void {
    this.#events.on('change', listener);
    return () => this.#events.off('change', listener);
  }
}

export interface FileServerIdentityOptions {
  logger: Logger;
  pollIntervalMs?: number;
}

/** The broker's SVID from `--svid-cert` and `--svid-key`, reloaded when either file changes. */
export class FileServerIdentity extends StaticServerIdentity {
  readonly #watcher: WatchedFiles;

  private constructor(identity: TlsIdentity, watcher: WatchedFiles) {
    super(identity);
    this.#watcher = watcher;
  }

  static async load(certPath: string, keyPath: string, options: FileServerIdentityOptions): Promise<FileServerIdentity> {
    const log = options.logger.child({ certPath, keyPath });
    // Set once the first load succeeded; later loads update the source in place.
    const holder: { source?: FileServerIdentity; first?: TlsIdentity } = {};
    const watcher = new WatchedFiles(
      [certPath, keyPath],
      ([cert, key]) => {
        const identity = tlsIdentityFrom(cert?.toString('utf8') ?? '', key?.toString('utf8') ?? '');
        if (holder.source) {
          holder.source.set(identity);
          log.info({ spiffeId: identity.spiffeId.toString(), notAfter: identity.notAfter.toISOString() }, 'server SVID reloaded');
        } else {
          holder.first = identity;
        }
      },
      {
        pollIntervalMs: options.pollIntervalMs,
        onError: (err) => log.error({ err: err.message }, 'server SVID reload failed; keeping the last good SVID'),
      },
    );
    try {
      await watcher.start();
    } catch (err) {
      watcher.close();
      throw new Error(`cannot load the broker's SVID from ${certPath} and ${keyPath}: ${(err as Error).message}`);
    }
    holder.source = new FileServerIdentity(holder.first as TlsIdentity, watcher);
    return holder.source;
  }

  close(): void {
    this.#watcher.close();
  }
}
