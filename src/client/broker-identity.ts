/**
 * How a client authenticates the broker: by SPIFFE ID, not host name. The chain the broker
 * presents is verified with the SPIFFE X509-SVID rules against the bundle of the broker's trust
 * domain (read at each handshake, so a rotated bundle is used at once), and its SPIFFE ID must be
 * the one expected, or, without one, any ID of that trust domain.
 */
import type { PeerCertificate } from 'node:tls';
import type { X509BundleSource } from '../spiffe/bundle.js';
import type { SpiffeId } from '../spiffe/id.js';
import { linkedChain } from '../spiffe/peer-chain.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';

/** A `checkServerIdentity` for the broker: undefined when it is who we expect, else the error saying why not. */
export function brokerIdentityCheck(
  bundles: X509BundleSource,
  trustDomain: string,
  expected?: SpiffeId,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    try {
      const { spiffeId } = verifyX509Svid(linkedChain(cert), bundles);
      if (expected && !spiffeId.equals(expected)) return new Error(`broker presented ${spiffeId.toString()}, expected ${expected.toString()}`);
      if (!spiffeId.isMemberOf(trustDomain)) return new Error(`broker presented ${spiffeId.toString()}, expected an ID of trust domain ${trustDomain}`);
      return undefined;
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  };
}
