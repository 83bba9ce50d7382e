/**
 * The certificate chain of a TLS peer as Node links it: `getPeerCertificate(true)` on a server
 * socket, or the certificate `checkServerIdentity` receives on a client. Leaf first, each
 * certificate's `issuerCertificate` next, until Node links a certificate to itself (a root from
 * the trust store) or stops. What X509-SVID verification takes as the presented chain.
 */
import type { PeerCertificate } from 'node:tls';

/** A certificate as Node links them (tls.DetailedPeerCertificate fits). */
export type LinkedCertificate = Pick<PeerCertificate, 'raw'> & { issuerCertificate?: LinkedCertificate };

/** More than a peer can mean: SVID chains are a leaf and a few intermediates. */
const MAX_LINKED = 16;

/**
 * The DER chain leaf first, at most 16 certificates. With `dropRoot`, a last certificate Node
 * linked to itself (a self-signed root, which a verifier takes from its own bundle anyway) is
 * left out, unless it is the only one.
 */
export function linkedChain(cert: LinkedCertificate | null | undefined, options: { dropRoot?: boolean } = {}): Buffer[] {
  const chain: Buffer[] = [];
  let current = cert ?? undefined;
  while (current?.raw && chain.length < MAX_LINKED) {
    const next = current.issuerCertificate;
    const root = next === current;
    if (root && options.dropRoot && chain.length > 0) break;
    chain.push(current.raw);
    if (!next || root) break;
    current = next;
  }
  return chain;
}
