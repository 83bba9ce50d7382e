/**
 * X509-SVID verification per the SPIFFE X509-SVID specification.
 *
 * The chain is anchored only in the bundle of the trust domain named by the leaf's SPIFFE ID,
 * never in the union of all trusted bundles: a certificate for spiffe://a.test/x signed by
 * b.test's CA is refused even though b.test is trusted. Intermediates presented by the peer are
 * used to build the path; a CA certificate the peer presents is never a trust anchor by itself.
 *
 * The rules for signing certificates (X509-SVID 3.2, 4.1, 4.3: CA flag, critical key usage with
 * keyCertSign, a SPIFFE ID without a path) apply to the intermediates the peer presents. The
 * authorities of a trust bundle are trust anchors in the RFC 5280 sense: trusted as configured,
 * not judged by those rules, but still subject to validity, key, signature algorithm and critical
 * extension checks, and their name constraints are enforced (a constraint only narrows trust).
 *
 * This module searches for the path and decides which rule applies where; the rules themselves
 * are in x509svid-rules.ts (one certificate at a time) and name-constraints.ts.
 */
import { parseCertificate, type ParsedCertificate } from './certificate.js';
import type { X509BundleSource } from './bundle.js';
import type { SpiffeId } from './id.js';
import { checkNameConstraints } from './name-constraints.js';
import { describeCertificate, X509SvidError } from './x509svid-error.js';
import { checkCertificate, checkLeaf, checkPathLength, checkSigningCertificate, leafSpiffeId } from './x509svid-rules.js';

/** A peer presents its leaf and intermediates; more than this is refused before any crypto. */
export const MAX_PRESENTED_CERTIFICATES = 10;
/** Signature checks one path search may spend (as Go's crypto/x509 bounds its own search). */
export const MAX_SIGNATURE_CHECKS = 100;

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
      throw new X509SvidError(
        'unknown-authority',
        `could not verify leaf certificate: the certificate path search gave up after ${MAX_SIGNATURE_CHECKS} signature checks`,
        id,
      );
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
        checkNameConstraints([...path, anchor], `trust bundle authority "${describeCertificate(anchor)}"`, id);
        return [...path, anchor];
      } catch (err) {
        closestFailure = err as X509SvidError;
      }
    }
    if (path.length + 1 >= maxPathLength) return undefined;
    for (const candidate of presented) {
      if (deadEnds.has(candidate.thumbprint) || path.some((c) => c.thumbprint === candidate.thumbprint)) continue;
      // Cheap checks first: a candidate that cannot be a signing certificate costs no signature check.
      const role = `intermediate certificate "${describeCertificate(candidate)}"`;
      try {
        checkSigningCertificate(candidate, role, id);
        checkCertificate(candidate, role, now, id);
      } catch (err) {
        if (namesIssuer(tip, candidate)) closestFailure = err as X509SvidError;
        continue;
      }
      if (!signedBy(tip, candidate)) continue;
      try {
        checkNameConstraints([...path, candidate], role, id);
      } catch (err) {
        closestFailure = err as X509SvidError;
        continue;
      }
      const found = extend([...path, candidate]);
      if (found) return found;
      deadEnds.add(candidate.thumbprint);
    }
    return undefined;
  };

  const path = extend([leaf]);
  if (path) return path;
  throw closestFailure ?? new X509SvidError('unknown-authority', `could not verify leaf certificate: no chain to the trust bundle of "${id.trustDomain}"`, id);
}

/** Whether `cert` names `issuer` as its issuer (names only; no signature check). */
function namesIssuer(cert: ParsedCertificate, issuer: ParsedCertificate): boolean {
  return cert.issuer === issuer.subject;
}
