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
  | 'path-length'
  | 'too-many-certificates';

/** A peer presents its leaf and intermediates; more than this is refused before any crypto. */
export const MAX_PRESENTED_CERTIFICATES = 10;
/** Signature checks one path search may spend (as Go's crypto/x509 bounds its own search). */
export const MAX_SIGNATURE_CHECKS = 100;

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
  if (presented.length > MAX_PRESENTED_CERTIFICATES) {
    throw new X509SvidError('too-many-certificates', `${presented.length} certificates presented; at most ${MAX_PRESENTED_CERTIFICATES} are accepted`);
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

/**
 * Depth-first path building from the leaf to one of the trust domain's authorities. Anchors are
 * tried before presented certificates, so a peer that also sends the root still anchors in the
 * bundle. When no path exists, the most specific rule a candidate issuer broke is reported.
 *
 * The search is bounded, because it runs before the peer is authenticated: each signature is
 * checked at most once (cached per pair), a presented certificate that led nowhere is not
 * explored again, and the whole search may spend at most MAX_SIGNATURE_CHECKS signature
 * checks. Without these, certificates that all claim to sign each other make the search
 * factorial in their number.
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
  let budget = MAX_SIGNATURE_CHECKS;
  const signatures = new Map<string, boolean>();
  const deadEnds = new Set<string>();

  const signedBy = (cert: ParsedCertificate, issuer: ParsedCertificate): boolean => {
    if (cert.issuer !== issuer.subject) return false;
    const key = `${cert.thumbprint}>${issuer.thumbprint}`;
    const known = signatures.get(key);
    if (known !== undefined) return known;
    if (--budget < 0) {
      throw new X509SvidError('unknown-authority', `could not verify leaf certificate: the certificate path search gave up after ${MAX_SIGNATURE_CHECKS} signature checks`, id);
    }
    let ok: boolean;
    try {
      ok = cert.node.verify(issuer.node.publicKey);
    } catch {
      ok = false;
    }
    signatures.set(key, ok);
    return ok;
  };

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
      if (deadEnds.has(candidate.thumbprint) || path.some((c) => c.thumbprint === candidate.thumbprint)) continue;
      // Cheap checks first: a candidate that cannot be a signing certificate costs no signature check.
      try {
        const role = `intermediate certificate "${candidate.subject.replace(/\n/g, ', ')}"`;
        checkSigningCertificate(candidate, role, id);
        checkCertificate(candidate, role, now, id);
      } catch (err) {
        if (namesIssuer(tip, candidate)) closestFailure = err as X509SvidError;
        continue;
      }
      if (!signedBy(tip, candidate)) continue;
      const found = extend([...path, candidate]);
      if (found) return found;
      deadEnds.add(candidate.thumbprint);
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

/** Whether `cert` names `issuer` as its issuer (names only; no signature check). */
function namesIssuer(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  return cert.issuer === issuer.subject;
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
