/**
 * The per-certificate rules of the X509-SVID specification: what the leaf must be (one SPIFFE
 * ID, not a CA, the key usages of an SVID), what a signing certificate the peer presents must be
 * (X509-SVID 3.2, 4.1, 4.3), and what every certificate on a path must be (valid now, a strong
 * key, a strong signature hash, no critical extension this verifier does not understand).
 *
 * Apart from the path search in x509svid.ts, which decides where each rule applies: a rule here
 * looks at one certificate (or one path's lengths) and throws X509SvidError when it is broken.
 */
import { KeyUsageFlag, keyWeakness, type ParsedCertificate } from './certificate.js';
import { SpiffeId, SpiffeIdError } from './id.js';
import { X509SvidError } from './x509svid-error.js';

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

/** The leaf's SPIFFE ID: exactly one URI SAN, a valid SPIFFE ID with a path. */
export function leafSpiffeId(leaf: ParsedCertificate): SpiffeId {
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

/** The leaf's own rules (X509-SVID 4.1, 4.3): not a CA, a critical digitalSignature-only key usage, serverAuth and clientAuth if it names purposes. */
export function checkLeaf(leaf: ParsedCertificate, id: SpiffeId): void {
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
export function checkCertificate(cert: ParsedCertificate, role: string, now: Date, id: SpiffeId): void {
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

/** A signing certificate the peer presents (X509-SVID 4.1, 4.3): a CA, a critical keyCertSign, a SPIFFE ID without a path. */
export function checkSigningCertificate(cert: ParsedCertificate, role: string, id: SpiffeId): void {
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

/** basicConstraints pathLenConstraint: how many intermediates may follow each CA below it. */
export function checkPathLength(path: readonly ParsedCertificate[], id: SpiffeId): void {
  // path: leaf, intermediates..., anchor. For the CA at index i, the intermediates below it are i - 1.
  for (let i = 1; i < path.length; i++) {
    const limit = path[i]?.pathLength;
    if (limit !== undefined && i - 1 > limit) {
      throw new X509SvidError('path-length', `certificate path exceeds the pathLenConstraint ${limit} of a signing certificate`, id);
    }
  }
}
