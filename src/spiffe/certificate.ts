/**
 * One X.509 certificate, parsed once into the facts SPIFFE verification needs.
 *
 * node:crypto's X509Certificate verifies signatures and exposes keys of every type SPIRE uses
 * (EC P-256/P-384, RSA, Ed25519); @peculiar/x509 reads the extensions node:crypto does not
 * expose in structured form (basicConstraints, keyUsage bits, URI SANs, criticality).
 * node-forge is not used: it cannot parse EC public keys.
 */
import 'reflect-metadata';
import { X509Certificate, createHash } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { parseNameConstraints, type NameConstraints } from './name-constraints.js';

export class CertificateParseError extends Error {
  override readonly name = 'CertificateParseError';
}

export interface ParsedCertificate {
  readonly der: Buffer;
  /** node:crypto view, used for signature verification and key details. */
  readonly node: X509Certificate;
  /** RFC 2253-ish text of the subject DN, as node:crypto prints it; '' when the subject is empty. */
  readonly subject: string;
  readonly issuer: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** basicConstraints cA; `undefined` when the extension is absent. */
  readonly isCa: boolean | undefined;
  readonly pathLength: number | undefined;
  /** KeyUsage bit flags (x509.KeyUsageFlags); `undefined` when the extension is absent. */
  readonly keyUsage: number | undefined;
  /** Whether the keyUsage extension is marked critical (false when it is absent). */
  readonly keyUsageCritical: boolean;
  /** extKeyUsage purpose OIDs; `undefined` when the extension is absent. */
  readonly extKeyUsage: readonly string[] | undefined;
  readonly uriSans: readonly string[];
  readonly dnsSans: readonly string[];
  /** Whether the subjectAltName extension is marked critical (false when it is absent). */
  readonly subjectAltNameCritical: boolean;
  /** The subject is an empty sequence (RFC 5280 4.1.2.6: then the subjectAltName extension must be critical). */
  readonly subjectEmpty: boolean;
  /** The nameConstraints extension (RFC 5280 4.2.1.10); `undefined` when it is absent. */
  readonly nameConstraints: NameConstraints | undefined;
  readonly criticalExtensionOids: readonly string[];
  /** e.g. "ECDSA/SHA-256", "RSASSA-PKCS1-v1_5/SHA-256", "Ed25519". */
  readonly signatureAlgorithm: string;
  /** RFC 8705 x5t#S256: base64url SHA-256 of the DER certificate. */
  readonly thumbprint: string;
}

export const KeyUsageFlag = x509.KeyUsageFlags;

const OID_NAME_CONSTRAINTS = '2.5.29.30';

/** Parses one DER certificate; throws CertificateParseError with the reason. */
export function parseCertificate(der: Uint8Array): ParsedCertificate {
  const bytes = Buffer.from(der);
  let node: X509Certificate;
  let cert: x509.X509Certificate;
  try {
    node = new X509Certificate(bytes);
    cert = new x509.X509Certificate(bytes);
  } catch (err) {
    throw new CertificateParseError(`certificate could not be parsed: ${(err as Error).message}`);
  }
  // RFC 5280 4.2: "A certificate MUST NOT include more than one instance of a particular
  // extension." Reading only the first of two SAN extensions would hide a second URI SAN.
  const seen = new Set<string>();
  for (const extension of cert.extensions) {
    if (seen.has(extension.type)) throw new CertificateParseError(`certificate has more than one extension ${extension.type}`);
    seen.add(extension.type);
  }
  const basic = cert.getExtension(x509.BasicConstraintsExtension);
  const usage = cert.getExtension(x509.KeyUsagesExtension);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const constraints = cert.getExtension(OID_NAME_CONSTRAINTS);
  const sig = cert.signatureAlgorithm as Algorithm & { hash?: Algorithm };
  const sanNames = san ? san.names.items : [];
  return {
    der: bytes,
    node,
    subject: nameText(node.subject),
    issuer: nameText(node.issuer),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    isCa: basic?.ca,
    pathLength: basic?.pathLength,
    keyUsage: usage?.usages,
    keyUsageCritical: usage?.critical ?? false,
    extKeyUsage: eku ? eku.usages.map(String) : undefined,
    uriSans: sanNames.filter((n) => n.type === 'url').map((n) => n.value),
    dnsSans: sanNames.filter((n) => n.type === 'dns').map((n) => n.value),
    subjectAltNameCritical: san?.critical ?? false,
    subjectEmpty: cert.subjectName.toJSON().length === 0,
    nameConstraints: constraints ? nameConstraintsOf(new Uint8Array(constraints.value), constraints.critical) : undefined,
    criticalExtensionOids: cert.extensions.filter((e) => e.critical).map((e) => e.type),
    signatureAlgorithm: sig.hash ? `${sig.name}/${sig.hash.name}` : sig.name,
    thumbprint: certificateThumbprint(bytes),
  };
}

/** The nameConstraints extension read, or a CertificateParseError saying why it cannot be. */
function nameConstraintsOf(der: Uint8Array, critical: boolean): NameConstraints {
  try {
    return parseNameConstraints(der, critical);
  } catch (err) {
    throw new CertificateParseError(`nameConstraints extension could not be parsed: ${(err as Error).message}`);
  }
}

/** node:crypto reports an empty name as undefined, though it is typed as a string. */
function nameText(name: string | undefined): string {
  return name ?? '';
}

/** base64url(SHA-256(DER)), the `x5t#S256` confirmation value of RFC 8705. */
export function certificateThumbprint(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('base64url');
}

/**
 * Parses every CERTIFICATE block of a PEM document. Any other block type is an error:
 * a bundle or chain file that also holds a key is a deployment mistake worth stopping on.
 */
export function parsePemCertificates(pem: string): ParsedCertificate[] {
  let blocks: ReturnType<typeof x509.PemConverter.decodeWithHeaders>;
  try {
    blocks = x509.PemConverter.decodeWithHeaders(pem);
  } catch (err) {
    throw new CertificateParseError(`PEM could not be decoded: ${(err as Error).message}`);
  }
  if (blocks.length === 0) {
    throw new CertificateParseError('no PEM CERTIFICATE block found');
  }
  return blocks.map((block, i) => {
    if (block.type !== 'CERTIFICATE') {
      throw new CertificateParseError(`PEM block ${i + 1} is ${block.type}, expected CERTIFICATE`);
    }
    return parseCertificate(new Uint8Array(block.rawData));
  });
}

/**
 * Parses certificates given as ASN.1 DER concatenated back to back, the way the SPIFFE Workload
 * API carries chains and bundles. Each certificate is one DER SEQUENCE; its header says how long
 * it is, which is where the next one starts.
 */
export function parseDerCertificates(der: Uint8Array): ParsedCertificate[] {
  const bytes = Buffer.from(der.buffer, der.byteOffset, der.byteLength);
  if (bytes.length === 0) throw new CertificateParseError('no DER certificate found (empty)');
  const certificates: ParsedCertificate[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const n = certificates.length + 1;
    if (bytes[offset] !== 0x30) throw new CertificateParseError(`DER certificate ${n} does not start with a SEQUENCE`);
    const first = bytes[offset + 1];
    if (first === undefined) throw new CertificateParseError(`DER certificate ${n} is truncated`);
    let length = first;
    let header = 2;
    if (first & 0x80) {
      const lengthBytes = first & 0x7f;
      // Definite lengths only (DER), and no certificate needs more than 4 length bytes.
      if (lengthBytes === 0 || lengthBytes > 4) throw new CertificateParseError(`DER certificate ${n} has an invalid length encoding`);
      if (offset + 2 + lengthBytes > bytes.length) throw new CertificateParseError(`DER certificate ${n} is truncated`);
      length = bytes.readUIntBE(offset + 2, lengthBytes);
      header = 2 + lengthBytes;
    }
    const end = offset + header + length;
    if (end > bytes.length) throw new CertificateParseError(`DER certificate ${n} is truncated`);
    certificates.push(parseCertificate(bytes.subarray(offset, end)));
    offset = end;
  }
  return certificates;
}

/** Why a key cannot sign anything the broker accepts, or undefined when it is acceptable. */
export function keyWeakness(cert: ParsedCertificate): string | undefined {
  const key = cert.node.publicKey;
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return details.namedCurve === 'prime256v1' || details.namedCurve === 'secp384r1' || details.namedCurve === 'secp521r1'
        ? undefined
        : `EC curve ${details.namedCurve ?? 'unknown'} is not supported (P-256, P-384, P-521)`;
    case 'rsa':
    case 'rsa-pss':
      return (details.modulusLength ?? 0) >= 2048 ? undefined : `RSA key of ${details.modulusLength ?? 0} bits is below the 2048-bit minimum`;
    case 'ed25519':
      return undefined;
    default:
      return `key type ${key.asymmetricKeyType ?? 'unknown'} is not supported`;
  }
}
