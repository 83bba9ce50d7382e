/**
 * What the Workload API's messages mean: an X509SVID message as a serving identity, a bundle map
 * (trust domain → concatenated DER CAs) as trust bundles.
 *
 * Apart from workload-api-source.ts because these are pure conversions, each of which refuses a
 * message the broker cannot use; the source decides what to do with the outcome (serve it, or
 * log and keep the last good one).
 */
import { createPrivateKey } from 'node:crypto';
import type { X509Bundle } from './bundle.js';
import { parseDerCertificates, type ParsedCertificate } from './certificate.js';
import { parseTrustDomain, SpiffeId } from './id.js';
import type { X509SvidMessage, X509SvidResponse } from './workload-api.js';
import { tlsIdentityFrom, type TlsIdentity } from './x509-source.js';

/**
 * The identity to serve from a FetchX509SVID message: its first X509-SVID (the default
 * identity), or the one whose SPIFFE ID is `wantedId`. Throws saying why none is usable.
 */
export function servingIdentityOf(message: X509SvidResponse, wantedId: string | undefined, now: Date): TlsIdentity {
  if (message.svids.length === 0) throw new Error('the response holds no X509-SVID');
  const chosen = wantedId === undefined ? message.svids[0] : message.svids.find((s) => s.spiffeId === wantedId);
  if (!chosen) throw new Error(`no X509-SVID for ${wantedId ?? ''} among ${message.svids.map((s) => s.spiffeId).join(', ')}`);
  return tlsIdentityFromX509SvidMessage(chosen, now);
}

/**
 * Turns one X509SVID message into a serving identity: the chain (concatenated DER, leaf first)
 * and the PKCS#8 DER key become PEM, and the pair is checked like any SVID the broker serves
 * with. Throws saying what is wrong; the message's key material never appears in the error.
 */
function tlsIdentityFromX509SvidMessage(svid: X509SvidMessage, now = new Date()): TlsIdentity {
  if (!svid.spiffeId) throw new Error('the X509-SVID has no spiffe_id');
  if (svid.x509Svid.length === 0) throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid is empty`);
  if (svid.x509SvidKey.length === 0) throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid_key is empty`);
  let chain: ParsedCertificate[];
  try {
    chain = parseDerCertificates(svid.x509Svid);
  } catch (err) {
    throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid: ${(err as Error).message}`);
  }
  let keyPem: string;
  try {
    keyPem = createPrivateKey({ key: svid.x509SvidKey, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString();
  } catch {
    throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid_key is not an unencrypted PKCS#8 DER private key`);
  }
  const identity = tlsIdentityFrom(chain.map((c) => derToPem(c.der)).join(''), keyPem, now);
  if (identity.spiffeId.toString() !== svid.spiffeId) {
    throw new Error(`X509-SVID ${svid.spiffeId}: the certificate is for ${identity.spiffeId.toString()}`);
  }
  return identity;
}

/** Reads a Workload API bundle map (trust domain SPIFFE ID → concatenated DER CAs). Throws on anything unusable. */
export function bundlesFromWorkloadApiMap(map: Readonly<Record<string, Uint8Array>>): X509Bundle[] {
  const bundles = new Map<string, X509Bundle>();
  for (const [key, der] of Object.entries(map)) {
    let trustDomain: string;
    try {
      trustDomain = parseTrustDomain(key);
    } catch (err) {
      throw new Error(`bundle key "${key}" is not a trust domain: ${(err as Error).message}`);
    }
    try {
      bundles.set(trustDomain, { trustDomain, authorities: parseDerCertificates(der) });
    } catch (err) {
      throw new Error(`bundle for ${trustDomain}: ${(err as Error).message}`);
    }
  }
  return [...bundles.values()];
}

/**
 * The bundles a FetchX509SVID message carries: each SVID's own trust domain (its `bundle`) and
 * the `federated_bundles`. Throws on anything unusable.
 */
export function bundlesOfX509SvidResponse(message: X509SvidResponse): X509Bundle[] {
  const own: Record<string, Uint8Array> = {};
  for (const svid of message.svids) {
    if (svid.bundle.length > 0 && svid.spiffeId) own[SpiffeId.parse(svid.spiffeId).trustDomain] = svid.bundle;
  }
  return bundlesFromWorkloadApiMap({ ...message.federatedBundles, ...own });
}

function derToPem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}
