/**
 * Channel credentials that follow an X509Source: the SVID the client presents and the roots it
 * trusts for the broker are pushed into grpc-js (through its certificate-provider credentials)
 * whenever the source rotates them, so an open client uses them for every new connection without
 * being rebuilt. Connections already open carry on with what they were made with.
 *
 * The broker is authenticated by SPIFFE ID against the source's *current* bundles
 * (broker-identity.ts): its own trust domain's roots anchor the handshake, and the SPIFFE
 * X509-SVID rules and the expected ID are checked on top.
 */
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { bundleRootsPem } from '../spiffe/bundle.js';
import { SpiffeId } from '../spiffe/id.js';
import type { X509Source } from '../spiffe/x509-source.js';
import { brokerIdentityCheck } from './broker-identity.js';

export interface X509SourceCredentialsOptions {
  /** The broker's SPIFFE ID; when omitted, any ID of `trustDomain` is accepted. */
  serverId?: string;
  /** The broker's trust domain; taken from `serverId`, else the client's own SVID. */
  trustDomain?: string;
}

type CertificateProvider = grpc.experimental.CertificateProvider;
type CaCertificateUpdateListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityCertificateUpdateListener = grpc.experimental.IdentityCertificateUpdateListener;
type CaUpdate = Parameters<CaCertificateUpdateListener>[0];
type IdentityUpdate = Parameters<IdentityCertificateUpdateListener>[0];

/** A grpc-js CertificateProvider fed by an X509Source; follows the source only while grpc-js listens. */
class X509SourceCertificateProvider implements CertificateProvider {
  readonly #source: X509Source;
  readonly #trustDomain: () => string | undefined;
  readonly #caListeners = new Set<CaCertificateUpdateListener>();
  readonly #identityListeners = new Set<IdentityCertificateUpdateListener>();
  #unsubscribe: (() => void) | undefined;
  #ca: { pem: string; update: CaUpdate } | undefined;
  #identity: { pem: string; update: IdentityUpdate } | undefined;

  constructor(source: X509Source, trustDomain: () => string | undefined) {
    this.#source = source;
    this.#trustDomain = trustDomain;
  }

  addCaCertificateListener(listener: CaCertificateUpdateListener): void {
    this.#caListeners.add(listener);
    this.#follow();
    if (this.#ca) listener(this.#ca.update);
  }

  removeCaCertificateListener(listener: CaCertificateUpdateListener): void {
    this.#caListeners.delete(listener);
    this.#maybeStop();
  }

  addIdentityCertificateListener(listener: IdentityCertificateUpdateListener): void {
    this.#identityListeners.add(listener);
    this.#follow();
    if (this.#identity) listener(this.#identity.update);
  }

  removeIdentityCertificateListener(listener: IdentityCertificateUpdateListener): void {
    this.#identityListeners.delete(listener);
    this.#maybeStop();
  }

  #follow(): void {
    if (this.#unsubscribe) return;
    const offSvid = this.#source.onChange(() => this.#refresh());
    const offBundles = this.#source.bundles.onChange(() => this.#refresh());
    this.#unsubscribe = () => {
      offSvid();
      offBundles();
    };
    this.#refresh();
  }

  #maybeStop(): void {
    if (this.#caListeners.size > 0 || this.#identityListeners.size > 0) return;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }

  /** Reads the source and tells the listeners what changed (nothing while the source has no SVID or bundle yet). */
  #refresh(): void {
    const identity = this.#source.current();
    const idPem = identity ? identity.certChainPem + identity.keyPem : undefined;
    if (identity && idPem !== this.#identity?.pem) {
      const update = { certificate: Buffer.from(identity.certChainPem), privateKey: Buffer.from(identity.keyPem) };
      this.#identity = { pem: idPem ?? '', update };
      for (const listener of this.#identityListeners) listener(update);
    }
    const td = this.#trustDomain();
    const bundle = td === undefined ? undefined : this.#source.bundles.getX509Bundle(td);
    const caPem = bundle && bundleRootsPem(bundle);
    if (caPem && caPem !== this.#ca?.pem) {
      const update = { caCertificate: Buffer.from(caPem) };
      this.#ca = { pem: caPem, update };
      for (const listener of this.#caListeners) listener(update);
    }
  }
}

/**
 * mTLS credentials for the broker that follow `source`: every new connection presents the current
 * SVID and verifies the broker against the current bundles. Use with svidChannelOptions().
 */
export function x509SourceCredentials(source: X509Source, options: X509SourceCredentialsOptions = {}): grpc.ChannelCredentials {
  const expected = options.serverId ? SpiffeId.parse(options.serverId) : undefined;
  const fixed = options.trustDomain ?? expected?.trustDomain;
  if (expected && options.trustDomain && options.trustDomain !== expected.trustDomain) {
    throw new Error(`x509SourceCredentials: serverId ${expected.toString()} is not in trust domain ${options.trustDomain}`);
  }
  const trustDomain = () => fixed ?? source.current()?.spiffeId.trustDomain;
  const provider = new X509SourceCertificateProvider(source, trustDomain);
  const check = (host: string, cert: PeerCertificate) => {
    const td = trustDomain();
    if (td === undefined) return new Error('x509SourceCredentials: the source has no SVID yet, so the broker trust domain is unknown');
    return brokerIdentityCheck(source.bundles, td, expected)(host, cert);
  };
  return grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, { checkServerIdentity: check });
}
