/**
 * Trust domains minted at test time: a.test (root and intermediate), b.test (federated) and
 * c.test (known to nobody). Real keys, real signatures.
 */
import {
  chainPem,
  createIntermediateCa,
  createRootCa,
  issueCertificate,
  KeyUsage,
  mintX509Svid,
  privateKeyPem,
  type CertificateTemplate,
  type IssuedCertificate,
} from '../../src/devca/certificates.js';
import { parsePemCertificates } from '../../src/spiffe/certificate.js';
import { TrustBundleSet, type X509Bundle } from '../../src/spiffe/bundle.js';
import { tlsIdentityFrom, type TlsIdentity } from '../../src/spiffe/x509-source.js';

export interface TrustDomainPki {
  readonly name: string;
  readonly root: IssuedCertificate;
  readonly intermediate: IssuedCertificate;
  bundle(): X509Bundle;
}

export async function trustDomainPki(name: string): Promise<TrustDomainPki> {
  const root = await createRootCa(name);
  const intermediate = await createIntermediateCa(root, name);
  return { name, root, intermediate, bundle: () => ({ trustDomain: name, authorities: parsePemCertificates(root.pem) }) };
}

export interface PemSvid {
  certChainPem: string;
  keyPem: string;
}

export async function pemOf(issued: IssuedCertificate, extraChain: IssuedCertificate[] = []): Promise<PemSvid> {
  return { certChainPem: chainPem(issued) + extraChain.map((c) => c.pem).join(''), keyPem: await privateKeyPem(issued.keys) };
}

/** A leaf template shaped like a valid X509-SVID; tests override one field to break one rule. */
export function leafTemplate(spiffeId: string, overrides: Partial<CertificateTemplate> = {}): CertificateTemplate {
  return { subject: 'O=test workload', uris: [spiffeId], ca: false, keyUsage: KeyUsage.digitalSignature, ...overrides };
}

export function issueLeaf(issuer: IssuedCertificate, spiffeId: string, overrides: Partial<CertificateTemplate> = {}): Promise<IssuedCertificate> {
  return issueCertificate(leafTemplate(spiffeId, overrides), issuer);
}

export async function brokerIdentity(pki: TrustDomainPki, path = '/task-broker'): Promise<TlsIdentity> {
  const svid = await mintX509Svid(pki.root, `spiffe://${pki.name}${path}`);
  const pem = await pemOf(svid);
  return tlsIdentityFrom(pem.certChainPem, pem.keyPem);
}

export function bundleSet(...domains: TrustDomainPki[]): TrustBundleSet {
  return new TrustBundleSet(domains.map((d) => d.bundle()));
}
