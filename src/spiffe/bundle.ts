/**
 * X.509 trust bundles: the CA certificates of one trust domain, and the sources that hold them.
 *
 * A bundle comes from a PEM file or a SPIFFE bundle document (the JWKS of the SPIFFE Trust Domain
 * and Bundle spec, keys with `use: x509-svid`); later the Workload API fills the same set.
 */
import { EventEmitter } from 'node:events';
import { CertificateParseError, parseCertificate, parsePemCertificates, type ParsedCertificate } from './certificate.js';
import { parseTrustDomain } from './id.js';

export class BundleError extends Error {
  override readonly name = 'BundleError';
}

export interface X509Bundle {
  readonly trustDomain: string;
  readonly authorities: readonly ParsedCertificate[];
  /** spiffe_sequence of a bundle document, when it had one. */
  readonly sequence?: number;
}

/** The bundle's authorities as PEM, one after the other: the `ca` TLS takes. */
export function bundleRootsPem(bundle: X509Bundle): string {
  return bundle.authorities.map((a) => a.node.toString()).join('\n');
}

/** Where verification finds the bundle for a trust domain; files, static sets and the Workload API all fit. */
export interface X509BundleSource {
  getX509Bundle(trustDomain: string): X509Bundle | undefined;
  /** Changes whenever any bundle changes, so verified connections know to re-check. */
  readonly generation: number;
}

/** Parses a bundle file: a SPIFFE bundle document (JSON) or PEM certificates, told apart by the first byte. */
export function parseX509Bundle(trustDomain: string, content: string): X509Bundle {
  const td = parseTrustDomain(trustDomain);
  const text = content.trimStart();
  if (text.startsWith('{')) {
    return parseSpiffeBundleDocument(td, text);
  }
  try {
    return { trustDomain: td, authorities: parsePemCertificates(text) };
  } catch (err) {
    throw new BundleError(`bundle for ${td}: ${(err as Error).message}`);
  }
}

interface Jwk {
  use?: unknown;
  kty?: unknown;
  x5c?: unknown;
}

/**
 * Reads the X.509 authorities of a SPIFFE bundle document. Keys with another `use` (jwt-svid)
 * are skipped here; an x509-svid key must carry exactly one certificate in `x5c`.
 */
export function parseSpiffeBundleDocument(trustDomain: string, json: string): X509Bundle {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (err) {
    throw new BundleError(`bundle for ${trustDomain}: not valid JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
    throw new BundleError(`bundle for ${trustDomain}: SPIFFE bundle document must be a JWKS with a "keys" array`);
  }
  const { keys, spiffe_sequence: sequence } = doc as { keys: Jwk[]; spiffe_sequence?: unknown };
  const authorities: ParsedCertificate[] = [];
  keys.forEach((key, i) => {
    if (key.use !== 'x509-svid') return;
    if (!Array.isArray(key.x5c) || key.x5c.length !== 1 || typeof key.x5c[0] !== 'string') {
      throw new BundleError(`bundle for ${trustDomain}: key ${i} (use x509-svid) must have exactly one certificate in x5c`);
    }
    try {
      authorities.push(parseCertificate(Buffer.from(key.x5c[0], 'base64')));
    } catch (err) {
      const reason = err instanceof CertificateParseError ? err.message : String(err);
      throw new BundleError(`bundle for ${trustDomain}: key ${i}: ${reason}`);
    }
  });
  if (authorities.length === 0) {
    throw new BundleError(`bundle for ${trustDomain}: SPIFFE bundle document has no x509-svid authorities`);
  }
  return { trustDomain, authorities, ...(typeof sequence === 'number' ? { sequence } : {}) };
}

/**
 * The bundles the broker trusts, one per trust domain (its own and federated ones).
 * Replacing a bundle affects new verifications at once; nothing else is restarted.
 */
export class TrustBundleSet implements X509BundleSource {
  readonly #bundles = new Map<string, X509Bundle>();
  readonly #events = new EventEmitter();
  #generation = 0;

  constructor(initial: Iterable<X509Bundle> = []) {
    for (const bundle of initial) this.#bundles.set(bundle.trustDomain, bundle);
  }

  get generation(): number {
    return this.#generation;
  }

  getX509Bundle(trustDomain: string): X509Bundle | undefined {
    return this.#bundles.get(trustDomain);
  }

  trustDomains(): string[] {
    return [...this.#bundles.keys()].sort();
  }

  /** Adds or replaces the bundle of `bundle.trustDomain`. */
  set(bundle: X509Bundle): void {
    this.#bundles.set(bundle.trustDomain, bundle);
    this.#changed(bundle.trustDomain);
  }

  /** Stops trusting a trust domain altogether (e.g. federation removed). */
  delete(trustDomain: string): void {
    if (this.#bundles.delete(trustDomain)) this.#changed(trustDomain);
  }

  /** Replaces the whole set atomically: trust domains absent from `bundles` are no longer trusted. */
  replaceAll(bundles: Iterable<X509Bundle>): void {
    this.#bundles.clear();
    for (const bundle of bundles) this.#bundles.set(bundle.trustDomain, bundle);
    this.#changed(undefined);
  }

  onChange(listener: (trustDomain: string | undefined) => void): () => void {
    this.#events.on('change', listener);
    return () => this.#events.off('change', listener);
  }

  #changed(trustDomain: string | undefined): void {
    this.#generation += 1;
    this.#events.emit('change', trustDomain);
  }
}
