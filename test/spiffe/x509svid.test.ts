/**
 * The X509-SVID verifier on its own, given chains directly (no TLS stack in between), so each
 * rule's exact message and failure kind is visible.
 */
import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { createIntermediateCa, createRootCa, issueCertificate, KeyUsage, mintX509Svid } from '../../src/devca/certificates.js';
import { TrustBundleSet } from '../../src/spiffe/bundle.js';
import { parsePemCertificates } from '../../src/spiffe/certificate.js';
import { MAX_PRESENTED_CERTIFICATES, MAX_SIGNATURE_CHECKS, verifyX509Svid } from '../../src/spiffe/x509svid.js';
import type { X509SvidFailure } from '../../src/spiffe/x509svid-error.js';
import { bundleSet, issueLeaf, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { chainOf, expectSvidRefused, svidFailureOf } from '../helpers/x509svid.js';

let a: TrustDomainPki;
let b: TrustDomainPki;
let bundles: TrustBundleSet;

beforeAll(async () => {
  [a, b] = await Promise.all([trustDomainPki('a.test'), trustDomainPki('b.test')]);
  bundles = bundleSet(a, b);
});

function expectFailure(chain: Uint8Array[], failure: X509SvidFailure, message: RegExp, now?: Date) {
  expectSvidRefused(chain, bundles, failure, message, { now });
}

describe('verifyX509Svid', () => {
  it('returns the SPIFFE ID, the leaf and the path to the anchor', async () => {
    const leaf = await mintX509Svid(a.intermediate, 'spiffe://a.test/ns/prod/sa/api');
    const verified = verifyX509Svid(chainOf(leaf, a.intermediate), bundles);
    expect(verified.spiffeId.toString()).toBe('spiffe://a.test/ns/prod/sa/api');
    expect(verified.chain.map((c) => c.der)).toEqual([leaf.der, a.intermediate.der, a.root.der]);
    expect(verified.validUntil.getTime()).toBe(
      Math.min(leaf.certificate.notAfter.getTime(), a.intermediate.certificate.notAfter.getTime(), a.root.certificate.notAfter.getTime()),
    );
  });

  it('an intermediate without keyCertSign is named as the reason', async () => {
    const inter = await issueCertificate({ subject: 'O=no kcs', ca: true, keyUsage: KeyUsage.digitalSignature }, a.root);
    const leaf = await mintX509Svid(inter, 'spiffe://a.test/w');
    expectFailure(chainOf(leaf, inter), 'signing-certificate', /intermediate certificate .*O=no kcs.* must have 'keyCertSign' set as key usage/);
  });

  it('an intermediate without the CA flag is named as the reason', async () => {
    const inter = await issueCertificate({ subject: 'O=no ca', ca: false, keyUsage: KeyUsage.keyCertSign }, a.root);
    const leaf = await mintX509Svid(inter, 'spiffe://a.test/w');
    expectFailure(chainOf(leaf, inter), 'signing-certificate', /must have CA flag set to true/);
  });

  it("a chain is anchored only in the bundle of the leaf's own trust domain", async () => {
    const leaf = await mintX509Svid(b.root, 'spiffe://a.test/impostor');
    expectFailure(chainOf(leaf), 'unknown-authority', /no chain to the trust bundle of "a.test"/);
    // The same certificate would verify if b.test's CA were a.test's: the anchor choice is what refuses it.
    const swapped = new TrustBundleSet([{ trustDomain: 'a.test', authorities: parsePemCertificates(b.root.pem) }]);
    expect(verifyX509Svid(chainOf(leaf), swapped).spiffeId.toString()).toBe('spiffe://a.test/impostor');
  });

  it('a presented certificate is never an anchor just for being presented', async () => {
    const rogueRoot = await createRootCa('a.test');
    const rogueInter = await createIntermediateCa(rogueRoot, 'a.test');
    const leaf = await mintX509Svid(rogueInter, 'spiffe://a.test/w');
    expectFailure(chainOf(leaf, rogueInter, rogueRoot), 'unknown-authority', /no chain/);
  });

  it('the verification time is injectable: a certificate verifies inside its window only', async () => {
    const leaf = await mintX509Svid(a.root, 'spiffe://a.test/w', { ttlMs: 60_000 });
    const notAfter = leaf.certificate.notAfter.getTime();
    expect(verifyX509Svid(chainOf(leaf), bundles, { now: new Date(notAfter - 1_000) }).spiffeId.toString()).toBe('spiffe://a.test/w');
    expectFailure(chainOf(leaf), 'expired', /leaf certificate has expired/, new Date(notAfter + 1_000));
    expectFailure(chainOf(leaf), 'not-yet-valid', /not valid yet/, new Date(leaf.certificate.notBefore.getTime() - 1_000));
  });

  it('an expired trust anchor no longer anchors anything', async () => {
    const shortRoot = await createRootCa('a.test', { ttlMs: 60_000 });
    const leaf = await mintX509Svid(shortRoot, 'spiffe://a.test/w', { ttlMs: 3_600_000 });
    const set = new TrustBundleSet([{ trustDomain: 'a.test', authorities: parsePemCertificates(shortRoot.pem) }]);
    const afterRootExpiry = new Date(shortRoot.certificate.notAfter.getTime() + 1_000);
    const err = svidFailureOf(() => verifyX509Svid(chainOf(leaf), set, { now: afterRootExpiry }));
    expect(err.failure).toBe('expired');
    expect(err.message).toMatch(/trust bundle authority has expired/);
  });

  it('no certificate at all', () => {
    expectFailure([], 'no-certificate', /no certificate presented/);
  });

  it('bytes that are not a certificate', () => {
    expectFailure([new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01])], 'malformed', /leaf certificate could not be parsed/);
  });

  it('a presented intermediate that is not a certificate', async () => {
    const leaf = await mintX509Svid(a.root, 'spiffe://a.test/w');
    expectFailure([leaf.der, new Uint8Array([1, 2, 3])], 'malformed', /presented certificate 2 could not be parsed/);
  });

  it.each([
    ['a trailing slash', 'spiffe://a.test/w/', /trailing slash/],
    ['a percent-encoded path', 'spiffe://a.test/w%41', /percent/],
    ['a query', 'spiffe://a.test/w?x=1', /query/],
  ])('a URI SAN with %s is not a SPIFFE ID', async (_what, uri, message) => {
    const leaf = await issueLeaf(a.root, uri);
    expectFailure(chainOf(leaf), 'leaf-spiffe-id', message);
  });

  describe('bounded path search (it runs before the peer is authenticated)', () => {
    /** CA certificates sharing one key and one subject: each appears to sign every other. */
    async function tangledChain(n: number): Promise<Uint8Array[]> {
      const first = await issueCertificate({ subject: 'CN=evil', ca: true, keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign });
      const cas = [first];
      for (let i = 1; i < n; i++)
        cas.push(await issueCertificate({ subject: 'CN=evil', ca: true, keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign, keys: first.keys }, first));
      const leaf = await issueLeaf(first, 'spiffe://a.test/x');
      return [leaf.der, ...cas.map((c) => c.der)];
    }

    it(`refuses more than ${MAX_PRESENTED_CERTIFICATES} presented certificates before any signature check`, async () => {
      const chain = await tangledChain(MAX_PRESENTED_CERTIFICATES);
      const verify = vi.spyOn(X509Certificate.prototype, 'verify');
      try {
        expectFailure(chain, 'too-many-certificates', /at most 10 are accepted/);
        expect(verify).not.toHaveBeenCalled();
      } finally {
        verify.mockRestore();
      }
    });

    it(`spends at most ${MAX_SIGNATURE_CHECKS} signature checks on certificates that all sign each other`, async () => {
      const chain = await tangledChain(MAX_PRESENTED_CERTIFICATES - 1);
      const verify = vi.spyOn(X509Certificate.prototype, 'verify');
      try {
        expectFailure(chain, 'unknown-authority', /could not verify leaf certificate/);
        expect(verify.mock.calls.length).toBeGreaterThan(0);
        expect(verify.mock.calls.length).toBeLessThanOrEqual(MAX_SIGNATURE_CHECKS);
      } finally {
        verify.mockRestore();
      }
    });
  });
});
