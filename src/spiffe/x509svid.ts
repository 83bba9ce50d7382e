/**
 * X509-SVID verification per the SPIFFE X509-SVID specification.
 *
 * The chain is anchored only in the bundle of the trust domain named by the leaf's SPIFFE ID,
 * never in the union of all trusted bundles: a certificate for spiffe://a.test/x signed by
 * b.test's CA is refused even though b.test is trusted. Intermediates presented by the peer are
 * used to build the path; a CA certificate the peer presents is never a trust anchor by itself.
 */
import { KeyUsageFlag, keyWeakness, parseCertificate, type ParsedCertificate } from './certificate.js';
import type { X509BundleSource } from './bundle.js';
import { SpiffeId, SpiffeIdError } from './id.js';

/** What went wrong, for metrics and tests; the message says it in words. */
export type X509SvidFailure =
  | 'no-certificate'
  | 'malformed'
  | 'leaf-uri-san'
  | 'leaf-spiffe-id'
  | 'leaf-ca'
  | 'leaf-key-usage'
  | 'expired'
  | 'not-yet-valid'
  | 'unknown-trust-domain'
  | 'unknown-authority'
  | 'signing-certificate'
  | 'weak-key'
  | 'signature-algorithm'
  | 'critical-extension'
  | 'path-length';

export class X509SvidError extends Error {
  override readonly name = 'X509SvidError';
  constructor(
    readonly failure: X509SvidFailure,
    detail: string,
    readonly spiffeId?: SpiffeId,
  ) {
    super(`x509svid: ${detail}`);
  }
}

export interface VerifiedX509Svid {
  readonly spiffeId: SpiffeId;
  readonly leaf: ParsedCertificate;
  /** The verified path: leaf first, trust anchor from the bundle last. */
  readonly chain: readonly ParsedCertificate[];
  /** The earliest notAfter along the path: after it the identity no longer verifies. */
  readonly validUntil: Date;
}

export interface VerifyOptions {
  /** The time to verify at; injectable for tests. */
  now?: Date;
  /** Longest path accepted, leaf and anchor included. */
  maxPathLength?: number;
}

/** Extensions this verifier understands; any other critical extension fails closed (RFC 5280 4.2). */
const UNDERSTOOD_CRITICAL_EXTENSIONS = new Set([
  '2.5.29.15', // keyUsage
  '2.5.29.17', // subjectAltName
  '2.5.29.19', // basicConstraints
  '2.5.29.37', // extKeyUsage (checked by nothing here, as go-spiffe accepts any EKU)
]);

const WEAK_SIGNATURE_HASHES = ['/SHA-1', '/MD5', '/MD2'];

/** Verifies a DER chain as presented by a peer (leaf first). Throws X509SvidError naming the rule broken. */
export function verifyX509Svid(presented: readonly Uint8Array[], bundles: X509BundleSource, options: VerifyOptions = {}): VerifiedX509Svid {
  const now = options.now ?? new Date();
  if (presented.length === 0) {
    throw new X509SvidError('no-certificate', 'no certificate presented');
  }
  const [leaf, ...intermediates] = presented.map((der, i) => parseOrFail(der, i));
  if (!leaf) throw new X509SvidError('no-certificate', 'no certificate presented');

  const spiffeId = leafSpiffeId(leaf);
  checkLeaf(leaf, spiffeId);
  checkCertificate(leaf, 'leaf certificate', now, spiffeId);

  const bundle = bundles.getX509Bundle(spiffeId.trustDomain);
  if (!bundle || bundle.authorities.length === 0) {
    throw new X509SvidError('unknown-trust-domain', `no trust bundle for trust domain "${spiffeId.trustDomain}"`, spiffeId);
  }
  const path = buildPath(leaf, intermediates, bundle.authorities, now, spiffeId, options.maxPathLength ?? 8);
  const validUntil = new Date(Math.min(...path.map((c) => c.notAfter.getTime())));
  return { spiffeId, leaf, chain: path, validUntil };
}

function parseOrFail(der: Uint8Array, index: number): ParsedCertificate {
  try {
    return parseCertificate(der);
  } catch (err) {
    const which = index === 0 ? 'leaf certificate' : `presented certificate ${index + 1}`;
    throw new X509SvidError('malformed', `${which} could not be parsed: ${(err as Error).message}`);
  }
}

function leafSpiffeId(leaf: ParsedCertificate): SpiffeId {
  if (leaf.uriSans.length !== 1) {
    throw new X509SvidError('leaf-uri-san', `leaf certificate must have exactly one URI SAN, found ${leaf.uriSans.length}`);
  }
  try {
    return SpiffeId.parse(leaf.uriSans[0] ?? '');
  } catch (err) {
    const reason = err instanceof SpiffeIdError ? err.message : String(err);
    throw new X509SvidError('leaf-spiffe-id', `leaf certificate URI SAN is not a valid SPIFFE ID: ${reason}`);
  }
}

function checkLeaf(leaf: ParsedCertificate, id: SpiffeId): void {
  if (leaf.isCa === true) {
    throw new X509SvidError('leaf-ca', 'leaf certificate must not have CA flag set to true', id);
  }
  if (leaf.keyUsage === undefined || (leaf.keyUsage & KeyUsageFlag.digitalSignature) === 0) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must have 'digitalSignature' set as key usage", id);
  }
  if (leaf.keyUsage & KeyUsageFlag.keyCertSign) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must not have 'keyCertSign' set as key usage", id);
  }
  if (leaf.keyUsage & KeyUsageFlag.cRLSign) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must not have 'cRLSign' set as key usage", id);
  }
}

/** Rules every certificate on the path obeys: validity period, key strength, signature hash, extensions. */
function checkCertificate(cert: ParsedCertificate, role: string, now: Date, id: SpiffeId): void {
  if (now.getTime() > cert.notAfter.getTime()) {
    throw new X509SvidError('expired', `${role} has expired (notAfter ${cert.notAfter.toISOString()}, now ${now.toISOString()})`, id);
  }
  if (now.getTime() < cert.notBefore.getTime()) {
    throw new X509SvidError('not-yet-valid', `${role} is not valid yet (notBefore ${cert.notBefore.toISOString()}, now ${now.toISOString()})`, id);
  }
  const weakness = keyWeakness(cert);
  if (weakness) {
    throw new X509SvidError('weak-key', `${role} key is not accepted: ${weakness}`, id);
  }
  if (WEAK_SIGNATURE_HASHES.some((h) => cert.signatureAlgorithm.toUpperCase().endsWith(h))) {
    throw new X509SvidError('signature-algorithm', `${role} is signed with a weak algorithm (${cert.signatureAlgorithm})`, id);
  }
  const unknown = cert.criticalExtensionOids.find((oid) => !UNDERSTOOD_CRITICAL_EXTENSIONS.has(oid));
  if (unknown) {
    throw new X509SvidError('critical-extension', `${role} has an unsupported critical extension (${unknown})`, id);
  }
}

function checkSigningCertificate(cert: ParsedCertificate, role: string, id: SpiffeId): void {
  if (cert.isCa !== true) {
    throw new X509SvidError('signing-certificate', `${role} must have CA flag set to true`, id);
  }
  if (cert.keyUsage === undefined || (cert.keyUsage & KeyUsageFlag.keyCertSign) === 0) {
    throw new X509SvidError('signing-certificate', `${role} must have 'keyCertSign' set as key usage`, id);
  }
}

function signedBy(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  if (cert.issuer !== issuer.subject) return false;
  try {
    return cert.node.verify(issuer.node.publicKey);
  } catch {
    return false;
  }
}

/**
 * Depth-first path building from the leaf to one of the trust domain's authorities. Anchors are
 * tried before presented certificates, so a peer that also sends the root still anchors in the
 * bundle. When no path exists, the most specific rule a candidate issuer broke is reported.
 */
function buildPath(
  leaf: ParsedCertificate,
  presented: readonly ParsedCertificate[],
  anchors: readonly ParsedCertificate[],
  now: Date,
  id: SpiffeId,
  maxPathLength: number,
): ParsedCertificate[] {
  let closestFailure: X509SvidError | undefined;

  const extend = (path: ParsedCertificate[]): ParsedCertificate[] | undefined => {
    const tip = path[path.length - 1] as ParsedCertificate;
    for (const anchor of anchors) {
      if (!signedBy(tip, anchor)) continue;
      try {
        checkCertificate(anchor, 'trust bundle authority', now, id);
        checkPathLength([...path, anchor], id);
        return [...path, anchor];
      } catch (err) {
        closestFailure = err as X509SvidError;
      }
    }
    if (path.length + 1 >= maxPathLength) return undefined;
    for (const candidate of presented) {
      if (path.some((c) => c.thumbprint === candidate.thumbprint) || !signedBy(tip, candidate)) continue;
      try {
        const role = `intermediate certificate "${candidate.subject.replace(/\n/g, ', ')}"`;
        checkSigningCertificate(candidate, role, id);
        checkCertificate(candidate, role, now, id);
      } catch (err) {
        closestFailure = err as X509SvidError;
        continue;
      }
      const found = extend([...path, candidate]);
      if (found) return found;
    }
    return undefined;
  };

  const path = extend([leaf]);
  if (path) return path;
  throw (
    closestFailure ??
    new X509SvidError('unknown-authority', `could not verify leaf certificate: no chain to the trust bundle of "${id.trustDomain}"`, id)
  );
}

/** basicConstraints pathLenConstraint: how many intermediates may follow each CA below it. */
function checkPathLength(path: readonly ParsedCertificate[], id: SpiffeId): void {
  // path: leaf, intermediates..., anchor. For the CA at index i, the intermediates below it are i - 1.
  for (let i = 1; i < path.length; i++) {
    const limit = path[i]?.pathLength;
    if (limit !== undefined && i - 1 > limit) {
      throw new X509SvidError('path-length', `certificate path exceeds the pathLenConstraint ${limit} of a signing certificate`, id);
    }
  }
}
