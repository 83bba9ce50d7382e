/**
 * The one error X509-SVID verification throws, naming the rule a chain broke.
 *
 * In a module of its own because the rules (x509svid-rules.ts, name-constraints.ts) and the path
 * search (x509svid.ts) all throw it, and the transport reads `failure` for its metrics.
 */
import type { ParsedCertificate } from './certificate.js';
import type { SpiffeId } from './id.js';

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

/** A certificate's subject on one line, for messages. */
export function describeCertificate(cert: ParsedCertificate): string {
  return cert.subject.replace(/\n/g, ', ');
}
