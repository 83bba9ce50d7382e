import { describe, expect, it } from 'vitest';
import { createRootCa } from '../../src/devca/certificates.js';
import { parseX509Bundle, TrustBundleSet } from '../../src/spiffe/bundle.js';

function spiffeBundleDocument(ders: Buffer[], extraKeys: object[] = []): string {
  return JSON.stringify({
    keys: [...ders.map((der) => ({ use: 'x509-svid', kty: 'EC', crv: 'P-256', x5c: [der.toString('base64')] })), ...extraKeys],
    spiffe_sequence: 7,
    spiffe_refresh_hint: 300,
  });
}

describe('trust bundles', () => {
  it('a PEM bundle yields every certificate as an authority', async () => {
    const [r1, r2] = await Promise.all([createRootCa('a.test'), createRootCa('a.test')]);
    const bundle = parseX509Bundle('a.test', r1.pem + r2.pem);
    expect(bundle.trustDomain).toBe('a.test');
    expect(bundle.authorities.map((c) => c.thumbprint)).toHaveLength(2);
  });

  it('a SPIFFE bundle document yields its x509-svid keys and skips jwt-svid keys', async () => {
    const root = await createRootCa('a.test');
    const doc = spiffeBundleDocument([root.der], [{ use: 'jwt-svid', kty: 'EC', kid: 'k1', crv: 'P-256', x: 'AA', y: 'AA' }]);
    const bundle = parseX509Bundle('a.test', doc);
    expect(bundle.authorities).toHaveLength(1);
    expect(bundle.authorities[0]?.der.equals(root.der)).toBe(true);
    expect(bundle.sequence).toBe(7);
  });

  it('a SPIFFE bundle key with two certificates in x5c is refused', async () => {
    const root = await createRootCa('a.test');
    const doc = JSON.stringify({ keys: [{ use: 'x509-svid', kty: 'EC', x5c: [root.der.toString('base64'), root.der.toString('base64')] }] });
    expect(() => parseX509Bundle('a.test', doc)).toThrow(/exactly one certificate in x5c/);
  });

  it.each([
    ['an empty file', '', /bundle for a.test: no PEM CERTIFICATE block found/],
    [
      'a private key instead of certificates',
      '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n',
      /PEM block 1 is PRIVATE KEY, expected CERTIFICATE/,
    ],
    ['broken JSON', '{"keys": [', /bundle for a.test: not valid JSON/],
    ['a JWKS without x509-svid keys', '{"keys": []}', /has no x509-svid authorities/],
    ['a JSON document that is not a JWKS', '{"certs": []}', /must be a JWKS with a "keys" array/],
    ['garbage in a certificate block', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', /certificate could not be parsed/],
  ])('%s is refused with a reason', (_what, content, reason) => {
    expect(() => parseX509Bundle('a.test', content)).toThrow(reason);
  });

  it('an invalid trust domain name is refused', () => {
    expect(() => parseX509Bundle('Not A Domain', '')).toThrow(/spiffeid/);
  });

  it('the set bumps its generation and notifies on every change', async () => {
    const root = await createRootCa('a.test');
    const set = new TrustBundleSet();
    const seen: Array<string | undefined> = [];
    set.onChange((td) => seen.push(td));
    const g0 = set.generation;
    set.set(parseX509Bundle('a.test', root.pem));
    set.delete('a.test');
    set.delete('a.test'); // no-op: nothing to remove
    expect(set.generation).toBe(g0 + 2);
    expect(seen).toEqual(['a.test', 'a.test']);
    expect(set.getX509Bundle('a.test')).toBeUndefined();
  });
});
