/**
 * Certificate minting for a local trust domain: the `dev-ca` command, the demo and the tests.
 *
 * Built on @peculiar/x509 and WebCrypto because both read and write EC keys (SPIRE's default
 * SVID key type is EC P-256); node-forge cannot. Templates are deliberately permissive so the
 * tests can mint every kind of broken certificate the verifier must refuse.
 */
// @peculiar/x509 resolves tsyringe, which needs the Reflect metadata polyfill loaded first.
import 'reflect-metadata';
import { createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export type KeyAlgorithm = 'ec-p256' | 'ec-p384' | 'rsa-1024' | 'rsa-2048' | 'rsa-3072' | 'ed25519';

export const KeyUsage = x509.KeyUsageFlags;
export const ExtendedKeyUsage = x509.ExtendedKeyUsage;
/** A raw extension (OID, criticality, DER value), for certificates with unusual extensions. */
export const Extension = x509.Extension;

export interface KeyPair {
  readonly algorithm: KeyAlgorithm;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
}

/** Name constraints (RFC 5280 4.2.1.10) for a CA template: subtrees by GeneralName, e.g. `{ type: 'url', value: 'a.test' }`. */
export interface NameConstraintsTemplate {
  permitted?: x509.JsonGeneralName[];
  excluded?: x509.JsonGeneralName[];
  /** Defaults to true, as RFC 5280 requires of conforming CAs. */
  critical?: boolean;
}

export interface CertificateTemplate {
  /** RFC 4514 distinguished name, e.g. "O=task-broker dev CA,CN=a.test"; '' for an empty subject. */
  subject: string;
  uris?: string[];
  dnsNames?: string[];
  /** Criticality of the subjectAltName extension; by default critical only when the subject is empty (RFC 5280 4.1.2.6). */
  subjectAltNameCritical?: boolean;
  /** `undefined` omits basicConstraints entirely. */
  ca?: boolean;
  pathLength?: number;
  /** Flags of KeyUsage; `undefined` omits the extension. */
  keyUsage?: number;
  /** Criticality of the keyUsage extension; defaults to true (X509-SVID 4.3). */
  keyUsageCritical?: boolean;
  /** extKeyUsage purpose OIDs; `undefined` omits the extension. */
  extKeyUsage?: string[];
  /** Criticality of the extKeyUsage extension; defaults to false. */
  extKeyUsageCritical?: boolean;
  /** `undefined` omits the nameConstraints extension. */
  nameConstraints?: NameConstraintsTemplate;
  notBefore?: Date;
  notAfter?: Date;
  key?: KeyAlgorithm;
  /** Reuse an existing key pair instead of generating one. */
  keys?: KeyPair;
  /** Hash for the issuer's signature; defaults to the issuer key's natural hash. */
  signatureHash?: 'SHA-1' | 'SHA-256' | 'SHA-384';
  extraExtensions?: x509.Extension[];
}

/** A certificate together with its key, as minted here. */
export interface IssuedCertificate {
  readonly certificate: x509.X509Certificate;
  readonly der: Buffer;
  readonly pem: string;
  readonly keys: KeyPair;
  /** The chain this certificate was issued under, nearest issuer first, root excluded. */
  readonly intermediates: readonly IssuedCertificate[];
}

const KEY_PARAMS: Record<KeyAlgorithm, EcKeyGenParams | RsaHashedKeyGenParams | Algorithm> = {
  'ec-p256': { name: 'ECDSA', namedCurve: 'P-256' },
  'ec-p384': { name: 'ECDSA', namedCurve: 'P-384' },
  'rsa-1024': rsaParams(1024),
  'rsa-2048': rsaParams(2048),
  'rsa-3072': rsaParams(3072),
  ed25519: { name: 'Ed25519' },
};

function rsaParams(modulusLength: number): RsaHashedKeyGenParams {
  return { name: 'RSASSA-PKCS1-v1_5', modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
}

export async function generateKeyPair(algorithm: KeyAlgorithm = 'ec-p256'): Promise<KeyPair> {
  const pair = (await webcrypto.subtle.generateKey(KEY_PARAMS[algorithm], true, ['sign', 'verify'])) as CryptoKeyPair;
  return { algorithm, privateKey: pair.privateKey, publicKey: pair.publicKey };
}

function signingAlgorithm(keys: KeyPair, hash?: string): Algorithm {
  switch (keys.algorithm) {
    case 'ec-p256':
      return { name: 'ECDSA', hash: hash ?? 'SHA-256' } as EcdsaParams;
    case 'ec-p384':
      return { name: 'ECDSA', hash: hash ?? 'SHA-384' } as EcdsaParams;
    case 'ed25519':
      return { name: 'Ed25519' };
    case 'rsa-1024':
    case 'rsa-2048':
    case 'rsa-3072':
      return { name: 'RSASSA-PKCS1-v1_5' };
  }
}

/** Issues a certificate from `template`, signed by `issuer`, or self-signed when there is none. */
export async function issueCertificate(template: CertificateTemplate, issuer?: IssuedCertificate): Promise<IssuedCertificate> {
  const keys = template.keys ?? (await generateKeyPair(template.key ?? 'ec-p256'));
  const signer = issuer?.keys ?? keys;
  const extensions: x509.Extension[] = [];
  if (template.ca !== undefined) {
    extensions.push(new x509.BasicConstraintsExtension(template.ca, template.pathLength, true));
  }
  if (template.keyUsage !== undefined) {
    extensions.push(new x509.KeyUsagesExtension(template.keyUsage, template.keyUsageCritical ?? true));
  }
  if (template.extKeyUsage !== undefined) {
    extensions.push(new x509.ExtendedKeyUsageExtension(template.extKeyUsage, template.extKeyUsageCritical ?? false));
  }
  if (template.nameConstraints !== undefined) {
    extensions.push(nameConstraintsExtension(template.nameConstraints));
  }
  const names: x509.JsonGeneralName[] = [
    ...(template.uris ?? []).map((value) => ({ type: 'url' as const, value })),
    ...(template.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
  ];
  if (names.length > 0) {
    // RFC 5280: the SAN extension is critical when the subject name is empty; otherwise SPIFFE leaves set it non-critical.
    extensions.push(new x509.SubjectAlternativeNameExtension(names, template.subjectAltNameCritical ?? template.subject === ''));
  }
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  if (issuer) {
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuer.certificate));
  }
  extensions.push(...(template.extraExtensions ?? []));

  const now = Date.now();
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: template.subject,
    issuer: issuer ? issuer.certificate.subject : template.subject,
    notBefore: template.notBefore ?? new Date(now - 60_000),
    notAfter: template.notAfter ?? new Date(now + 3_600_000),
    publicKey: keys.publicKey,
    signingKey: signer.privateKey,
    signingAlgorithm: signingAlgorithm(signer, template.signatureHash),
    extensions,
  });
  const der = Buffer.from(certificate.rawData);
  const intermediates = issuer && issuer.certificate.subject !== issuer.certificate.issuer ? [issuer, ...issuer.intermediates] : [];
  return { certificate, der, pem: certificate.toString('pem') + '\n', keys, intermediates };
}

/** DER TLV with a low tag number. */
function derTlv(tag: number, content: Uint8Array): Buffer {
  const n = content.length;
  if (n > 0xffff) throw new Error('devca: DER value too long');
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}

/** NameConstraints ::= SEQUENCE { permittedSubtrees [0] GeneralSubtrees OPTIONAL, excludedSubtrees [1] GeneralSubtrees OPTIONAL } */
function nameConstraintsExtension(constraints: NameConstraintsTemplate): x509.Extension {
  const subtrees = (tag: number, names: x509.JsonGeneralName[] | undefined) =>
    names?.length ? [derTlv(tag, Buffer.concat(names.map((n) => derTlv(0x30, new Uint8Array(new x509.GeneralName(n.type, n.value).rawData)))))] : [];
  const value = derTlv(0x30, Buffer.concat([...subtrees(0xa0, constraints.permitted), ...subtrees(0xa1, constraints.excluded)]));
  return new x509.Extension('2.5.29.30', constraints.critical ?? true, value);
}

function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return bytes.toString('hex');
}

const HOUR = 3_600_000;

export interface CaOptions {
  key?: KeyAlgorithm;
  ttlMs?: number;
  /** Subject common name; the trust domain by default. */
  commonName?: string;
}

/** A self-signed root CA for `trustDomain`, shaped like SPIRE's: CA, keyCertSign|cRLSign, the trust domain's URI. */
export function createRootCa(trustDomain: string, options: CaOptions = {}): Promise<IssuedCertificate> {
  return issueCertificate({
    subject: `O=task-broker dev CA,CN=${options.commonName ?? trustDomain}`,
    uris: [`spiffe://${trustDomain}`],
    ca: true,
    keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign | KeyUsage.digitalSignature,
    key: options.key ?? 'ec-p256',
    notAfter: new Date(Date.now() + (options.ttlMs ?? 24 * 365 * HOUR)),
  });
}

/** An intermediate signing CA under `parent`, as SPIRE's server CA sits under an upstream authority. */
export function createIntermediateCa(parent: IssuedCertificate, trustDomain: string, options: CaOptions = {}): Promise<IssuedCertificate> {
  return issueCertificate(
    {
      subject: `O=task-broker dev CA,CN=${options.commonName ?? `${trustDomain} intermediate`}`,
      uris: [`spiffe://${trustDomain}`],
      ca: true,
      keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign | KeyUsage.digitalSignature,
      key: options.key ?? 'ec-p256',
      notAfter: new Date(Date.now() + (options.ttlMs ?? 24 * 30 * HOUR)),
    },
    parent,
  );
}

export interface SvidOptions {
  key?: KeyAlgorithm;
  ttlMs?: number;
  dnsNames?: string[];
}

/** An X509-SVID for `spiffeId` shaped like SPIRE's default: EC P-256, digitalSignature, server and client auth. */
export function mintX509Svid(ca: IssuedCertificate, spiffeId: string, options: SvidOptions = {}): Promise<IssuedCertificate> {
  return issueCertificate(
    {
      subject: 'O=task-broker dev CA',
      uris: [spiffeId],
      dnsNames: options.dnsNames,
      ca: false,
      keyUsage: KeyUsage.digitalSignature | KeyUsage.keyEncipherment | KeyUsage.keyAgreement,
      extKeyUsage: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
      key: options.key ?? 'ec-p256',
      notAfter: new Date(Date.now() + (options.ttlMs ?? HOUR)),
    },
    ca,
  );
}

/** PEM of the certificate followed by its intermediates: what a TLS peer presents. */
export function chainPem(issued: IssuedCertificate): string {
  return [issued, ...issued.intermediates].map((c) => c.pem).join('');
}

export async function privateKeyPem(keys: KeyPair): Promise<string> {
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return `-----BEGIN PRIVATE KEY-----\n${pkcs8
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

/** Loads a CA written by `dev-ca init` back into an IssuedCertificate that can sign. */
export async function loadIssuedCertificate(certPem: string, keyPem: string): Promise<IssuedCertificate> {
  const certificate = new x509.X509Certificate(certPem);
  const keyObject = createPrivateKey(keyPem);
  const algorithm = keyAlgorithmOf(keyObject);
  const pkcs8 = keyObject.export({ format: 'der', type: 'pkcs8' });
  const privateKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, KEY_PARAMS[algorithm], true, ['sign']);
  const publicKey = await certificate.publicKey.export(KEY_PARAMS[algorithm], ['verify']);
  const der = Buffer.from(certificate.rawData);
  return { certificate, der, pem: certificate.toString('pem') + '\n', keys: { algorithm, privateKey, publicKey }, intermediates: [] };
}

function keyAlgorithmOf(key: ReturnType<typeof createPrivateKey>): KeyAlgorithm {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      if (details.namedCurve === 'prime256v1') return 'ec-p256';
      if (details.namedCurve === 'secp384r1') return 'ec-p384';
      break;
    case 'ed25519':
      return 'ed25519';
    case 'rsa':
      if (details.modulusLength === 2048) return 'rsa-2048';
      if (details.modulusLength === 3072) return 'rsa-3072';
      break;
    default:
      break;
  }
  throw new Error(`devca: unsupported CA key type ${key.asymmetricKeyType ?? 'unknown'} ${details.namedCurve ?? details.modulusLength ?? ''}`);
}
