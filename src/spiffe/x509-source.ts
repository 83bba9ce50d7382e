/**
 * Where the broker's own X509-SVID and the trust bundles come from, in go-spiffe's shape: an
 * `X509Source` holds the current SVID (with its key) and the bundle set, announces each new
 * SVID, and is closed when the broker stops. The Workload API and watched files both are one;
 * the TLS server consumes the SVID half and swaps its certificate on each change, so new
 * connections get the new SVID and open connections carry on.
 */
import { EventEmitter } from 'node:events';
import { createSecureContext } from 'node:tls';
import type { TrustBundleSet } from './bundle.js';
import { parsePemCertificates } from './certificate.js';
import { SpiffeId } from './id.js';
import { checkKeyPair } from './key-pair.js';

/** An X509-SVID with its private key, in the form TLS takes it. */
export interface TlsIdentity {
  /** PEM: leaf first, then intermediates. */
  readonly certChainPem: string;
  readonly keyPem: string;
  readonly spiffeId: SpiffeId;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Non-secret facts a source may tell about itself (readiness detail, metrics). */
export interface X509SourceStatus {
  /** The source's feed (e.g. the Workload API stream) is up. */
  readonly connected?: boolean;
  /** When the last usable SVID update arrived. */
  readonly lastSvidUpdate?: Date | undefined;
  readonly [fact: string]: unknown;
}

/** The SVID half of a source: what the TLS server serves with. */
export interface X509SvidSource {
  /** The current SVID, or undefined until the first one arrives. */
  current(): TlsIdentity | undefined;
  /** Called with each new SVID once it is in force; returns the unsubscribe function. */
  onChange(listener: (identity: TlsIdentity) => void): () => void;
  /** Whether the source can serve; a source without it is ready whenever it has an unexpired SVID. */
  ready?(): boolean;
  status?(): X509SourceStatus;
}

/** An SVID and the trust bundles, kept current; close() stops following their origin. */
export interface X509Source extends X509SvidSource {
  /** Every trust domain whose workloads may call, the broker's own included. */
  readonly bundles: TrustBundleSet;
  close(): void;
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
  checkKeyPair(leaf, keyPem, 'server certificate and key do not form a usable pair: ');
  try {
    createSecureContext({ cert: certChainPem, key: keyPem }); // anything else TLS cannot use
  } catch (err) {
    throw new Error(`server certificate and key do not form a usable pair: ${(err as Error).message}`);
  }
  return { certChainPem, keyPem, spiffeId, notBefore: leaf.notBefore, notAfter: leaf.notAfter };
}

/** A fixed SVID, replaced only by set(); for tests. */
export class StaticX509SvidSource implements X509SvidSource {
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
