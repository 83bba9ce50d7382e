/**
 * Assertions on the X509-SVID verifier given chains directly, shared by its rule-by-rule tests and
 * the specification's sentence-by-sentence ones.
 */
import { expect } from 'vitest';
import type { IssuedCertificate } from '../../src/devca/certificates.js';
import type { X509BundleSource } from '../../src/spiffe/bundle.js';
import { verifyX509Svid, type VerifyOptions } from '../../src/spiffe/x509svid.js';
import { X509SvidError, type X509SvidFailure } from '../../src/spiffe/x509svid-error.js';

/** The DER chain a peer would present: the leaf first. */
export const chainOf = (...certs: IssuedCertificate[]) => certs.map((c) => c.der);

/** The X509SvidError `fn` throws; anything else it throws is rethrown, and returning is a failure. */
export function svidFailureOf(fn: () => unknown): X509SvidError {
  try {
    fn();
  } catch (err) {
    if (err instanceof X509SvidError) return err;
    throw err;
  }
  throw new Error('expected verification to fail');
}

/** `chain` is refused against `source` for `failure`, with a message (after the `x509svid: ` prefix) matching `message`. */
export function expectSvidRefused(chain: Uint8Array[], source: X509BundleSource, failure: X509SvidFailure, message: RegExp, options?: VerifyOptions): void {
  const err = svidFailureOf(() => verifyX509Svid(chain, source, options));
  expect(err.message).toMatch(/^x509svid: /);
  expect(err.message).toMatch(message);
  expect(err.failure).toBe(failure);
}
