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
 */
import { KeyUsageFlag, keyWeakness, parseCertificate, type GeneralSubtree, type ParsedCertificate } from './certificate.js';
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
  | 'leaf-extended-key-usage'
  | 'expired'
  | 'not-yet-valid'
  | 'unknown-trust-domain'
  | 'unknown-authority'
  | 'signing-certificate'
  | 'weak-key'
  | 'signature-algorithm'
  | 'critical-extension'
  | 'path-length'
  | 'name-constraints'
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
  '2.5.29.30', // nameConstraints (URI and DNS subtrees; any other type fails closed)
  '2.5.29.37', // extKeyUsage (on the leaf: serverAuth and clientAuth; on signing certificates: not restricted)
]);

const EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const EKU_NAMES: Readonly<Record<string, string>> = {
  [EKU_SERVER_AUTH]: 'serverAuth',
  [EKU_CLIENT_AUTH]: 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
  '2.5.29.37.0': 'anyExtendedKeyUsage',
};

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
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(leaf.uriSans[0] ?? '');
  } catch (err) {
    const reason = err instanceof SpiffeIdError ? err.message : String(err);
    throw new X509SvidError('leaf-spiffe-id', `leaf certificate URI SAN is not a valid SPIFFE ID: ${reason}`);
  }
  if (id.path === '') {
    throw new X509SvidError('leaf-spiffe-id', `leaf certificate SPIFFE ID "${id.toString()}" must have a non-root path component`, id);
  }
  if (leaf.subjectEmpty && !leaf.subjectAltNameCritical) {
    throw new X509SvidError('leaf-uri-san', 'leaf certificate has an empty subject, so its URI SAN extension must be marked critical', id);
  }
  return id;
}

function checkLeaf(leaf: ParsedCertificate, id: SpiffeId): void {
  if (leaf.isCa === true) {
    throw new X509SvidError('leaf-ca', 'leaf certificate must not have CA flag set to true', id);
  }
  if (leaf.keyUsage === undefined || (leaf.keyUsage & KeyUsageFlag.digitalSignature) === 0) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must have 'digitalSignature' set as key usage", id);
  }
  if (!leaf.keyUsageCritical) {
    throw new X509SvidError('leaf-key-usage', 'leaf certificate key usage extension must be marked critical', id);
  }
  if (leaf.keyUsage & KeyUsageFlag.keyCertSign) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must not have 'keyCertSign' set as key usage", id);
  }
  if (leaf.keyUsage & KeyUsageFlag.cRLSign) {
    throw new X509SvidError('leaf-key-usage', "leaf certificate must not have 'cRLSign' set as key usage", id);
  }
  const eku = leaf.extKeyUsage;
  if (eku !== undefined && !(eku.includes(EKU_SERVER_AUTH) && eku.includes(EKU_CLIENT_AUTH))) {
    const found = eku.length ? eku.map((oid) => EKU_NAMES[oid] ?? oid).join(', ') : 'none';
    throw new X509SvidError(
      'leaf-extended-key-usage',
      `leaf certificate extended key usage must include both 'serverAuth' and 'clientAuth' (found ${found})`,
      id,
    );
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
  if (!cert.keyUsageCritical) {
    throw new X509SvidError('signing-certificate', `${role} key usage extension must be marked critical`, id);
  }
  for (const uri of cert.uriSans) {
    if (!/^spiffe:/i.test(uri)) continue; // only a SPIFFE ID is constrained; other URIs are not
    let signer: SpiffeId;
    try {
      signer = SpiffeId.parse(uri);
    } catch (err) {
      const reason = err instanceof SpiffeIdError ? err.message : String(err);
      throw new X509SvidError('signing-certificate', `${role} URI SAN is not a valid SPIFFE ID: ${reason}`, id);
    }
    if (signer.path !== '') {
      throw new X509SvidError('signing-certificate', `${role} SPIFFE ID "${signer.toString()}" must not have a path component`, id);
    }
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
        checkNameConstraints([...path, anchor], `trust bundle authority "${describe(anchor)}"`, id);
        return [...path, anchor];
      } catch (err) {
        closestFailure = err as X509SvidError;
      }
    }
    if (path.length + 1 >= maxPathLength) return undefined;
    for (const candidate of presented) {
      if (deadEnds.has(candidate.thumbprint) || path.some((c) => c.thumbprint === candidate.thumbprint)) continue;
      // Cheap checks first: a candidate that cannot be a signing certificate costs no signature check.
      const role = `intermediate certificate "${describe(candidate)}"`;
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

/** A certificate's subject on one line, for messages. */
function describe(cert: ParsedCertificate): string {
  return cert.subject.replace(/\n/g, ', ');
}

/**
 * The name constraints (RFC 5280 4.2.1.10, X509-SVID 4.2) of the last certificate of `path` hold
 * for every certificate below it: each URI SAN's host (for a SPIFFE ID, its trust domain) against
 * URI subtrees, each DNS SAN against DNS subtrees. Self-issued intermediates are skipped, as RFC
 * 5280 6.1.3 (b) says. A constraint of any other type cannot be evaluated here and fails closed.
 */
function checkNameConstraints(path: readonly ParsedCertificate[], role: string, id: SpiffeId): void {
  const constraints = path[path.length - 1]?.nameConstraints;
  if (!constraints) return;
  for (const subtree of [...constraints.permitted, ...constraints.excluded]) {
    if (subtree.type !== 'uniformResourceIdentifier' && subtree.type !== 'dNSName') {
      throw new X509SvidError('name-constraints', `${role} has a ${subtree.type} name constraint, which this verifier cannot evaluate`, id);
    }
    if (subtree.minimum !== 0 || subtree.maximum !== undefined) {
      throw new X509SvidError('name-constraints', `${role} has a name constraint with a minimum or maximum, which RFC 5280 does not allow`, id);
    }
  }
  const ofType = (subtrees: readonly GeneralSubtree[], type: GeneralSubtree['type']) => subtrees.filter((t) => t.type === type).map((t) => (t.value ?? '').toLowerCase());
  const uriPermitted = ofType(constraints.permitted, 'uniformResourceIdentifier');
  const uriExcluded = ofType(constraints.excluded, 'uniformResourceIdentifier');
  const dnsPermitted = ofType(constraints.permitted, 'dNSName');
  const dnsExcluded = ofType(constraints.excluded, 'dNSName');

  for (let i = 0; i < path.length - 1; i++) {
    const cert = path[i] as ParsedCertificate;
    if (i > 0 && !cert.subjectEmpty && cert.subject === cert.issuer) continue;
    const whose = i === 0 ? 'leaf certificate' : `intermediate certificate "${describe(cert)}"`;
    if (uriPermitted.length || uriExcluded.length) {
      for (const uri of cert.uriSans) {
        const host = uriHost(uri);
        if (host === undefined) {
          throw new X509SvidError('name-constraints', `${whose} URI SAN "${uri}" has no host to check against the URI name constraints of ${role}`, id);
        }
        const excluded = uriExcluded.find((c) => uriHostMatches(host, c));
        if (excluded !== undefined) {
          throw new X509SvidError('name-constraints', `${whose} URI SAN "${uri}" is within the excluded URI name constraint "${excluded}" of ${role}`, id);
        }
        if (uriPermitted.length && !uriPermitted.some((c) => uriHostMatches(host, c))) {
          throw new X509SvidError('name-constraints', `${whose} URI SAN "${uri}" is not within the permitted URI name constraints (${uriPermitted.join(', ')}) of ${role}`, id);
        }
      }
    }
    if (dnsPermitted.length || dnsExcluded.length) {
      for (const dns of cert.dnsSans) {
        const name = dns.toLowerCase();
        const excluded = dnsExcluded.find((c) => dnsNameMatches(name, c));
        if (excluded !== undefined) {
          throw new X509SvidError('name-constraints', `${whose} DNS SAN "${dns}" is within the excluded DNS name constraint "${excluded}" of ${role}`, id);
        }
        if (dnsPermitted.length && !dnsPermitted.some((c) => dnsNameMatches(name, c))) {
          throw new X509SvidError('name-constraints', `${whose} DNS SAN "${dns}" is not within the permitted DNS name constraints (${dnsPermitted.join(', ')}) of ${role}`, id);
        }
      }
    }
  }
}

/** The lower-cased host of a URI with an authority, or undefined (no authority, empty host, IP literal). */
function uriHost(uri: string): string | undefined {
  const authority = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(uri)?.[1];
  if (authority === undefined) return undefined;
  const host = authority.slice(authority.lastIndexOf('@') + 1).replace(/:[0-9]*$/, '').toLowerCase();
  if (host === '' || host.startsWith('[') || /^[0-9.]+$/.test(host)) return undefined;
  return host;
}

/** RFC 5280 4.2.1.10 for URIs: "host.example.com" is that host only; ".example.com" is any host below it, not itself. */
function uriHostMatches(host: string, constraint: string): boolean {
  return constraint.startsWith('.') ? host.endsWith(constraint) && host.length > constraint.length : host === constraint;
}

/** RFC 5280 4.2.1.10 for DNS names: the name itself or any name with labels added on the left; ".example.com" only below it. */
function dnsNameMatches(name: string, constraint: string): boolean {
  if (constraint === '') return true;
  if (constraint.startsWith('.')) return name.endsWith(constraint) && name.length > constraint.length;
  return name === constraint || name.endsWith(`.${constraint}`);
}
