/**
 * The X509-SVID specification (spiffe/spiffe standards/X509-SVID.md), sections 2 to 5, one
 * MUST or MUST NOT sentence at a time. Each test is named after the sentence it checks, mints
 * real certificates, asserts the refusal with its failure kind and message, and accepts the
 * compliant variant as a positive control.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createIntermediateCa,
  createRootCa,
  ExtendedKeyUsage,
  Extension,
  issueCertificate,
  KeyUsage,
  mintX509Svid,
  type CertificateTemplate,
  type IssuedCertificate,
} from '../../src/devca/certificates.js';
import { initDevCa, mintDevSvid } from '../../src/devca/dev-ca.js';
import { TrustBundleSet, type X509BundleSource } from '../../src/spiffe/bundle.js';
import { parsePemCertificates } from '../../src/spiffe/certificate.js';
import { verifyX509Svid } from '../../src/spiffe/x509svid.js';
import type { X509SvidFailure } from '../../src/spiffe/x509svid-error.js';
import { bundleSet, issueLeaf, leafTemplate, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { chainOf, expectSvidRefused } from '../helpers/x509svid.js';

const HOUR = 3_600_000;
const ANY_EKU = '2.5.29.37.0';

let a: TrustDomainPki;
let b: TrustDomainPki;
let bundles: TrustBundleSet;
const tempDirs: string[] = [];

beforeAll(async () => {
  [a, b] = await Promise.all([trustDomainPki('a.test'), trustDomainPki('b.test')]);
  bundles = bundleSet(a, b);
});

afterAll(async () => {
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A bundle set whose trust domains all trust `root` (besides nothing else). */
function trusting(root: IssuedCertificate, ...trustDomains: string[]): TrustBundleSet {
  return new TrustBundleSet(trustDomains.map((trustDomain) => ({ trustDomain, authorities: parsePemCertificates(root.pem) })));
}

function expectRefused(chain: Uint8Array[], failure: X509SvidFailure, message: RegExp, source: X509BundleSource = bundles): void {
  expectSvidRefused(chain, source, failure, message);
}

function expectAccepted(chain: Uint8Array[], spiffeId: string, source: X509BundleSource = bundles): void {
  expect(verifyX509Svid(chain, source).spiffeId.toString()).toBe(spiffeId);
}

/** The chain of the workload spiffe://a.test/w: its leaf, issued by `ca`, then `ca`. */
const workloadChain = async (ca: IssuedCertificate) => chainOf(await issueLeaf(ca, 'spiffe://a.test/w'), ca);

/** A signing certificate shaped like SPIRE's intermediate CA; tests override one field to break one rule. */
function signingTemplate(overrides: Partial<CertificateTemplate> = {}): CertificateTemplate {
  return { subject: 'O=test signing CA', uris: ['spiffe://a.test'], ca: true, keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign, ...overrides };
}

const issueIntermediate = (overrides: Partial<CertificateTemplate> = {}, parent?: IssuedCertificate) =>
  issueCertificate(signingTemplate(overrides), parent ?? a.root);

describe('§2 SPIFFE ID', () => {
  it('"§2 An X.509 SVID MUST contain exactly one URI SAN": a leaf with no URI SAN is refused; one URI SAN beside DNS SANs is accepted', async () => {
    const none = await issueLeaf(a.root, 'unused', { uris: [], dnsNames: ['w.a.test'] });
    expectRefused(chainOf(none), 'leaf-uri-san', /leaf certificate must have exactly one URI SAN, found 0/);
    // "An X.509 SVID MAY contain any number of other SAN field types, including DNS SANs."
    const one = await issueLeaf(a.root, 'spiffe://a.test/w', { dnsNames: ['w.a.test', 'w2.a.test'] });
    expectAccepted(chainOf(one), 'spiffe://a.test/w');
  });

  it('"§2 An X.509 SVID MUST contain exactly one URI SAN": a second URI SAN in a duplicate subjectAltName extension is refused', async () => {
    // subjectAltName value: SEQUENCE { [6] uniformResourceIdentifier }
    const uri = Buffer.from('spiffe://a.test/two', 'latin1');
    const second = new Extension('2.5.29.17', false, Buffer.concat([Buffer.from([0x30, uri.length + 2, 0x86, uri.length]), uri]));
    const leaf = await issueLeaf(a.root, 'spiffe://a.test/one', { extraExtensions: [second] });
    expectRefused(chainOf(leaf), 'malformed', /leaf certificate could not be parsed: certificate has more than one extension 2\.5\.29\.17/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/one')), 'spiffe://a.test/one');
  });

  it('"§2 Validators encountering an SVID containing more than one URI SAN MUST reject the SVID": two SPIFFE IDs, or a SPIFFE ID and another URI, are refused', async () => {
    const two = await issueLeaf(a.root, 'spiffe://a.test/one', { uris: ['spiffe://a.test/one', 'spiffe://a.test/two'] });
    expectRefused(chainOf(two), 'leaf-uri-san', /exactly one URI SAN, found 2/);
    const mixed = await issueLeaf(a.root, 'spiffe://a.test/one', { uris: ['spiffe://a.test/one', 'https://a.test/one'] });
    expectRefused(chainOf(mixed), 'leaf-uri-san', /exactly one URI SAN, found 2/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/one')), 'spiffe://a.test/one');
  });
});

describe('§3 Hierarchy', () => {
  it('"§3.1 Leaf certificate SPIFFE IDs MUST have a non-root path component": a leaf for spiffe://a.test is refused', async () => {
    const root = await issueLeaf(a.root, 'spiffe://a.test');
    expectRefused(chainOf(root), 'leaf-spiffe-id', /leaf certificate SPIFFE ID "spiffe:\/\/a\.test" must have a non-root path component/);
    const slash = await issueLeaf(a.root, 'spiffe://a.test/');
    expectRefused(chainOf(slash), 'leaf-spiffe-id', /not a valid SPIFFE ID: .*trailing slash/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
  });

  it('"§3.1 the URI SAN extension MUST be marked as critical if Subject is omitted": an empty-subject leaf with a non-critical URI SAN is refused', async () => {
    const nonCritical = await issueLeaf(a.root, 'spiffe://a.test/anonymous', { subject: '', subjectAltNameCritical: false });
    expectRefused(chainOf(nonCritical), 'leaf-uri-san', /leaf certificate has an empty subject, so its URI SAN extension must be marked critical/);
    // "The Subject field is not required": an empty subject with a critical URI SAN is fine.
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/anonymous', { subject: '', subjectAltNameCritical: true })), 'spiffe://a.test/anonymous');
    // With a subject, the URI SAN may be non-critical (RFC 5280 4.2.1.6 SHOULD).
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/named', { subjectAltNameCritical: false })), 'spiffe://a.test/named');
  });

  it('"§3.2 If present, the SPIFFE ID of a signing certificate MUST NOT have a path component": an intermediate for spiffe://a.test/ca is refused', async () => {
    const withPath = await issueIntermediate({ subject: 'O=ca with path', uris: ['spiffe://a.test/ca'] });
    expectRefused(
      await workloadChain(withPath),
      'signing-certificate',
      /intermediate certificate "O=ca with path" SPIFFE ID "spiffe:\/\/a\.test\/ca" must not have a path component/,
    );
    const malformed = await issueIntermediate({ subject: 'O=ca with bad id', uris: ['spiffe://A.test'] });
    expectRefused(await workloadChain(malformed), 'signing-certificate', /intermediate certificate "O=ca with bad id" URI SAN is not a valid SPIFFE ID/);
    // Without a path, or without a SPIFFE ID at all ("if present"), the intermediate is fine.
    const plain = await issueIntermediate({ subject: 'O=ca without path' });
    expectAccepted(await workloadChain(plain), 'spiffe://a.test/w');
    const anonymous = await issueIntermediate({ subject: 'O=ca without id', uris: undefined });
    expectAccepted(await workloadChain(anonymous), 'spiffe://a.test/w');
  });

  it('"§3.2 the SPIFFE ID of a signing certificate MUST NOT have a path component" is not applied to trust bundle authorities (RFC 5280 trust anchors)', async () => {
    // Documented choice: a bundle's authorities are trusted as configured; only intermediates
    // the peer presents are judged as signing certificates.
    const anchor = await issueCertificate(signingTemplate({ subject: 'O=anchor with path', uris: ['spiffe://a.test/root'], keyUsageCritical: false }));
    expectAccepted(chainOf(await issueLeaf(anchor, 'spiffe://a.test/w')), 'spiffe://a.test/w', trusting(anchor, 'a.test'));
  });

  it('"§3.2 Signing certificates MUST NOT be used for authentication purposes": a CA certificate presented as the leaf is refused', async () => {
    expectRefused(chainOf(a.intermediate), 'leaf-spiffe-id', /must have a non-root path component/);
    const ca = await issueIntermediate({
      subject: 'O=ca as leaf',
      uris: ['spiffe://a.test/ca-as-leaf'],
      keyUsage: KeyUsage.keyCertSign | KeyUsage.digitalSignature,
    });
    expectRefused(chainOf(ca), 'leaf-ca', /leaf certificate must not have CA flag set to true/);
    expectAccepted(await workloadChain(a.intermediate), 'spiffe://a.test/w');
  });
});

describe('§4.1 Basic constraints', () => {
  it('"§4.1 Signing certificates MUST set the cA field to true": an intermediate with cA false, or without basicConstraints, is refused', async () => {
    const notCa = await issueIntermediate({ subject: 'O=not a ca', ca: false });
    expectRefused(await workloadChain(notCa), 'signing-certificate', /intermediate certificate "O=not a ca" must have CA flag set to true/);
    const noBc = await issueIntermediate({ subject: 'O=no bc', ca: undefined });
    expectRefused(await workloadChain(noBc), 'signing-certificate', /intermediate certificate "O=no bc" must have CA flag set to true/);
    // "Valid X.509 SVID signing certificates MAY set the pathLenConstraint field."
    const ca = await issueIntermediate({ subject: 'O=ca', pathLength: 0 });
    expectAccepted(await workloadChain(ca), 'spiffe://a.test/w');
  });

  it('"§4.1 leaf certificates MUST set the cA field to false": a leaf with cA true is refused', async () => {
    expectRefused(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { ca: true })), 'leaf-ca', /leaf certificate must not have CA flag set to true/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { ca: false })), 'spiffe://a.test/w');
    // cA is DEFAULT FALSE in DER: a leaf without basicConstraints has cA false.
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { ca: undefined })), 'spiffe://a.test/w');
  });
});

describe('§4.2 Name constraints', () => {
  const SENTENCE = '"§4.2 all SPIFFE IDs in subsequent certificates in a certification path MUST be located" within the name constraints';

  it(`${SENTENCE}: a leaf outside an intermediate's permitted URI subtree is refused`, async () => {
    const elsewhere = await issueIntermediate({
      subject: 'O=other.test only',
      nameConstraints: { permitted: [{ type: 'url', value: 'other.test' }] },
      uris: undefined,
    });
    expectRefused(
      await workloadChain(elsewhere),
      'name-constraints',
      /leaf certificate URI SAN "spiffe:\/\/a\.test\/w" is not within the permitted URI name constraints \(other\.test\) of intermediate certificate "O=other\.test only"/,
    );
    const own = await issueIntermediate({ subject: 'O=a.test only', nameConstraints: { permitted: [{ type: 'url', value: 'a.test' }] } });
    expectAccepted(await workloadChain(own), 'spiffe://a.test/w');
  });

  it(`${SENTENCE}: a leaf inside an excluded URI subtree is refused`, async () => {
    const excluding = await issueIntermediate({ subject: 'O=not a.test', nameConstraints: { excluded: [{ type: 'url', value: 'a.test' }] }, uris: undefined });
    expectRefused(
      await workloadChain(excluding),
      'name-constraints',
      /leaf certificate URI SAN "spiffe:\/\/a\.test\/w" is within the excluded URI name constraint "a\.test"/,
    );
    const excludingOther = await issueIntermediate({ subject: 'O=not b.test', nameConstraints: { excluded: [{ type: 'url', value: 'b.test' }] } });
    expectAccepted(await workloadChain(excludingOther), 'spiffe://a.test/w');
  });

  it(`${SENTENCE}: a URI constraint ".a.test" covers hosts below a.test, not a.test itself (RFC 5280 4.2.1.10)`, async () => {
    const below = await issueIntermediate({ subject: 'O=below a.test', uris: undefined, nameConstraints: { permitted: [{ type: 'url', value: '.a.test' }] } });
    const source = trusting(a.root, 'a.test', 'prod.a.test');
    expectRefused(await workloadChain(below), 'name-constraints', /not within the permitted URI name constraints \(\.a\.test\)/, source);
    expectAccepted(chainOf(await issueLeaf(below, 'spiffe://prod.a.test/w'), below), 'spiffe://prod.a.test/w', source);
  });

  it(`${SENTENCE}: a trust bundle authority's name constraints hold for every trust domain it anchors`, async () => {
    const root = await issueCertificate(signingTemplate({ subject: 'O=constrained root', nameConstraints: { permitted: [{ type: 'url', value: 'a.test' }] } }));
    const source = trusting(root, 'a.test', 'c.test');
    expectRefused(
      chainOf(await issueLeaf(root, 'spiffe://c.test/w')),
      'name-constraints',
      /leaf certificate URI SAN "spiffe:\/\/c\.test\/w" is not within the permitted URI name constraints \(a\.test\) of trust bundle authority "O=constrained root"/,
      source,
    );
    expectAccepted(chainOf(await issueLeaf(root, 'spiffe://a.test/w')), 'spiffe://a.test/w', source);
  });

  it(`${SENTENCE}: an intermediate's own SPIFFE ID below a constrained CA is checked too`, async () => {
    const root = await issueCertificate(signingTemplate({ subject: 'O=a.test root', nameConstraints: { permitted: [{ type: 'url', value: 'a.test' }] } }));
    const foreign = await issueIntermediate({ subject: 'O=b.test intermediate', uris: ['spiffe://b.test'] }, root);
    expectRefused(
      await workloadChain(foreign),
      'name-constraints',
      /intermediate certificate "O=b\.test intermediate" URI SAN "spiffe:\/\/b\.test" is not within the permitted URI name constraints \(a\.test\) of trust bundle authority "O=a\.test root"/,
      trusting(root, 'a.test'),
    );
    const own = await issueIntermediate({ subject: 'O=a.test intermediate' }, root);
    expectAccepted(await workloadChain(own), 'spiffe://a.test/w', trusting(root, 'a.test'));
  });

  it(`${SENTENCE}: DNS subtrees constrain the leaf's DNS SANs`, async () => {
    const dns = await issueIntermediate({
      subject: 'O=dns constrained',
      nameConstraints: { permitted: [{ type: 'dns', value: 'a.test' }], excluded: [{ type: 'dns', value: 'secret.a.test' }] },
    });
    expectRefused(
      chainOf(await issueLeaf(dns, 'spiffe://a.test/w', { dnsNames: ['w.b.test'] }), dns),
      'name-constraints',
      /leaf certificate DNS SAN "w\.b\.test" is not within the permitted DNS name constraints \(a\.test\)/,
    );
    expectRefused(
      chainOf(await issueLeaf(dns, 'spiffe://a.test/w', { dnsNames: ['db.secret.a.test'] }), dns),
      'name-constraints',
      /leaf certificate DNS SAN "db\.secret\.a\.test" is within the excluded DNS name constraint "secret\.a\.test"/,
    );
    expectAccepted(chainOf(await issueLeaf(dns, 'spiffe://a.test/w', { dnsNames: ['a.test', 'w.a.test'] }), dns), 'spiffe://a.test/w');
    // DNS subtrees say nothing about URIs: the SPIFFE ID is not a DNS name.
    expectAccepted(await workloadChain(dns), 'spiffe://a.test/w');
  });

  it.each([
    ['iPAddress', { type: 'ip', value: '10.0.0.0/8' }],
    ['directoryName', { type: 'dn', value: 'O=somewhere' }],
    ['rfc822Name', { type: 'email', value: 'a.test' }],
  ] as const)(`${SENTENCE}: a %s constraint cannot be evaluated and fails closed`, async (type, name) => {
    const ca = await issueIntermediate({ subject: `O=${type} constrained`, nameConstraints: { excluded: [name] } });
    expectRefused(
      await workloadChain(ca),
      'name-constraints',
      new RegExp(`intermediate certificate "O=${type} constrained" has a ${type} name constraint, which this verifier cannot evaluate`),
    );
  });

  it(`${SENTENCE}: a non-critical nameConstraints extension is enforced all the same`, async () => {
    const ca = await issueIntermediate({
      subject: 'O=soft constraint',
      uris: undefined,
      nameConstraints: { permitted: [{ type: 'url', value: 'other.test' }], critical: false },
    });
    expectRefused(await workloadChain(ca), 'name-constraints', /not within the permitted URI name constraints \(other\.test\)/);
  });
});

describe('§4.3 Key usage', () => {
  it('"§4.3 The key usage extension MUST be set on all SVIDs": a leaf or an intermediate without key usage is refused', async () => {
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: undefined })),
      'leaf-key-usage',
      /leaf certificate must have 'digitalSignature' set as key usage/,
    );
    const noKu = await issueIntermediate({ subject: 'O=no ku', keyUsage: undefined });
    expectRefused(await workloadChain(noKu), 'signing-certificate', /intermediate certificate "O=no ku" must have 'keyCertSign' set as key usage/);
    const ok = await issueIntermediate({ subject: 'O=ku' });
    expectAccepted(await workloadChain(ok), 'spiffe://a.test/w');
  });

  it('"§4.3 The key usage extension ... MUST be marked critical": a leaf or an intermediate with a non-critical key usage is refused', async () => {
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsageCritical: false })),
      'leaf-key-usage',
      /leaf certificate key usage extension must be marked critical/,
    );
    const soft = await issueIntermediate({ subject: 'O=soft ku', keyUsageCritical: false });
    expectRefused(await workloadChain(soft), 'signing-certificate', /intermediate certificate "O=soft ku" key usage extension must be marked critical/);
    const hard = await issueIntermediate({ subject: 'O=critical ku', keyUsageCritical: true });
    expectAccepted(chainOf(await issueLeaf(hard, 'spiffe://a.test/w', { keyUsageCritical: true }), hard), 'spiffe://a.test/w');
  });

  it('"§4.3 SVID signing certificates MUST set keyCertSign": an intermediate without keyCertSign is refused', async () => {
    const noKcs = await issueIntermediate({ subject: 'O=no kcs', keyUsage: KeyUsage.cRLSign | KeyUsage.digitalSignature });
    expectRefused(await workloadChain(noKcs), 'signing-certificate', /intermediate certificate "O=no kcs" must have 'keyCertSign' set as key usage/);
    // "They MAY set cRLSign."
    const kcs = await issueIntermediate({ subject: 'O=kcs only', keyUsage: KeyUsage.keyCertSign });
    expectAccepted(await workloadChain(kcs), 'spiffe://a.test/w');
  });

  it('"§4.3 Leaf SVIDs MUST set digitalSignature": a leaf with keyEncipherment only is refused', async () => {
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.keyEncipherment })),
      'leaf-key-usage',
      /leaf certificate must have 'digitalSignature' set as key usage/,
    );
    // "They MAY set keyEncipherment and/or keyAgreement."
    const leaf = await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyEncipherment | KeyUsage.keyAgreement });
    expectAccepted(chainOf(leaf), 'spiffe://a.test/w');
  });

  it('"§4.3 Leaf SVIDs MUST NOT set keyCertSign or cRLSign": a leaf with either is refused', async () => {
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign })),
      'leaf-key-usage',
      /leaf certificate must not have 'keyCertSign' set as key usage/,
    );
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature | KeyUsage.cRLSign })),
      'leaf-key-usage',
      /leaf certificate must not have 'cRLSign' set as key usage/,
    );
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature })), 'spiffe://a.test/w');
  });
});

describe('§4.4 Extended key usage', () => {
  it.each([
    ['clientAuth only', [ExtendedKeyUsage.clientAuth], /\(found clientAuth\)/],
    ['serverAuth only', [ExtendedKeyUsage.serverAuth], /\(found serverAuth\)/],
    ['codeSigning only', [ExtendedKeyUsage.codeSigning], /\(found codeSigning\)/],
    ['anyExtendedKeyUsage', [ANY_EKU], /\(found anyExtendedKeyUsage\)/],
    ['an unknown purpose and clientAuth', ['1.3.6.1.4.1.99999.7', ExtendedKeyUsage.clientAuth], /\(found 1\.3\.6\.1\.4\.1\.99999\.7, clientAuth\)/],
  ])('"§4.4 When included, fields id-kp-serverAuth and id-kp-clientAuth MUST be set": a leaf with %s is refused', async (_what, usages, found) => {
    const leaf = await issueLeaf(a.root, 'spiffe://a.test/w', { extKeyUsage: usages });
    expectRefused(chainOf(leaf), 'leaf-extended-key-usage', /leaf certificate extended key usage must include both 'serverAuth' and 'clientAuth'/);
    expectRefused(chainOf(leaf), 'leaf-extended-key-usage', found);
  });

  it('"§4.4 When included, fields id-kp-serverAuth and id-kp-clientAuth MUST be set": both (with others, critical or not) or no extension at all is accepted', async () => {
    const both = [ExtendedKeyUsage.serverAuth, ExtendedKeyUsage.clientAuth];
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extKeyUsage: both })), 'spiffe://a.test/w');
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extKeyUsage: [ExtendedKeyUsage.codeSigning, ...both] })), 'spiffe://a.test/w');
    // "it MAY be marked as critical"
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extKeyUsage: both, extKeyUsageCritical: true })), 'spiffe://a.test/w');
    // "Leaf SVIDs SHOULD include this extension": SHOULD, so a leaf without it is accepted.
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extKeyUsage: undefined })), 'spiffe://a.test/w');
    // "Signing certificates MAY include an Extended Key Usage extension": not restricted.
    const ca = await issueIntermediate({ subject: 'O=ca with eku', extKeyUsage: [ExtendedKeyUsage.clientAuth] });
    expectAccepted(chainOf(await issueLeaf(ca, 'spiffe://a.test/w', { extKeyUsage: both }), ca), 'spiffe://a.test/w');
  });
});

describe('§5.1 Path validation', () => {
  const SENTENCE = '"§5.1 The validation of trust in a given SVID ... MUST follow RFC 5280 path validation semantics"';

  it(`${SENTENCE}: a signature by a key other than the issuer's is refused`, async () => {
    const forged = await createRootCa('a.test');
    expectRefused(chainOf(await mintX509Svid(forged, 'spiffe://a.test/w')), 'unknown-authority', /no chain to the trust bundle of "a\.test"/);
    expectAccepted(chainOf(await mintX509Svid(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
  });

  it(`${SENTENCE}: every certificate on the path must be within its validity period`, async () => {
    const now = Date.now();
    const old = await issueIntermediate({ subject: 'O=old ca', notBefore: new Date(now - 3 * HOUR), notAfter: new Date(now - HOUR) });
    const leaf = await issueLeaf(old, 'spiffe://a.test/w', { notBefore: new Date(now - 2 * HOUR), notAfter: new Date(now + HOUR) });
    expectRefused(chainOf(leaf, old), 'expired', /intermediate certificate "O=old ca" has expired/);
    const early = await issueLeaf(a.root, 'spiffe://a.test/w', { notBefore: new Date(now + HOUR), notAfter: new Date(now + 2 * HOUR) });
    expectRefused(chainOf(early), 'not-yet-valid', /leaf certificate is not valid yet/);
  });

  it(`${SENTENCE}: a pathLenConstraint is enforced`, async () => {
    const root = await issueCertificate(signingTemplate({ subject: 'O=pathlen 0 root', pathLength: 0 }));
    const inter = await createIntermediateCa(root, 'a.test');
    expectRefused(chainOf(await mintX509Svid(inter, 'spiffe://a.test/w'), inter), 'path-length', /pathLenConstraint 0/, trusting(root, 'a.test'));
    expectAccepted(chainOf(await mintX509Svid(root, 'spiffe://a.test/w')), 'spiffe://a.test/w', trusting(root, 'a.test'));
  });

  it(`${SENTENCE}: an unrecognized critical extension is refused`, async () => {
    const critical = new Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([0x05, 0x00]));
    expectRefused(
      chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extraExtensions: [critical] })),
      'critical-extension',
      /leaf certificate has an unsupported critical extension \(1\.3\.6\.1\.4\.1\.99999\.1\)/,
    );
    const ca = await issueIntermediate({ subject: 'O=odd ca', extraExtensions: [critical] });
    expectRefused(await workloadChain(ca), 'critical-extension', /intermediate certificate "O=odd ca" has an unsupported critical extension/);
    const benign = new Extension('1.3.6.1.4.1.99999.1', false, new Uint8Array([0x05, 0x00]));
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { extraExtensions: [benign] })), 'spiffe://a.test/w');
  });

  it(`${SENTENCE}: the path must chain by name and signature to a bundle authority; a missing intermediate is refused`, async () => {
    const leaf = await mintX509Svid(a.intermediate, 'spiffe://a.test/w');
    expectRefused(chainOf(leaf), 'unknown-authority', /no chain to the trust bundle of "a\.test"/);
    expectAccepted(chainOf(leaf, a.intermediate), 'spiffe://a.test/w');
  });
});

describe('§5.2 Leaf validation', () => {
  it('"§5.2 the validator MUST ensure that the CA field in the basic constraints extension is set to false": a CA leaf is refused', async () => {
    expectRefused(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w', { ca: true })), 'leaf-ca', /leaf certificate must not have CA flag set to true/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
  });

  it('"§5.2 the validator MUST ensure ... that keyCertSign and cRLSign are not set in the key usage extension"', async () => {
    const both = await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign | KeyUsage.cRLSign });
    expectRefused(chainOf(both), 'leaf-key-usage', /must not have 'keyCertSign'/);
    const crl = await issueLeaf(a.root, 'spiffe://a.test/w', { keyUsage: KeyUsage.digitalSignature | KeyUsage.cRLSign });
    expectRefused(chainOf(crl), 'leaf-key-usage', /must not have 'cRLSign'/);
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
  });

  it('"§5.2 The validator MUST also ensure that the scheme of the SPIFFE ID is set to spiffe": other schemes are refused', async () => {
    for (const uri of ['https://a.test/w', 'SPIFFE://a.test/w', 'spiffe:a.test/w']) {
      expectRefused(
        chainOf(await issueLeaf(a.root, uri)),
        'leaf-spiffe-id',
        /leaf certificate URI SAN is not a valid SPIFFE ID: spiffeid: scheme is missing or invalid/,
      );
    }
    expectAccepted(chainOf(await issueLeaf(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
  });

  it('"§5.2 [the validator] MUST ensure that the SPIFFE ID has a non-root path component": spiffe://a.test is refused', async () => {
    expectRefused(chainOf(await mintX509Svid(a.root, 'spiffe://a.test')), 'leaf-spiffe-id', /must have a non-root path component/);
    expectRefused(chainOf(await mintX509Svid(b.root, 'spiffe://b.test')), 'leaf-spiffe-id', /"spiffe:\/\/b\.test" must have a non-root path component/);
    expectAccepted(chainOf(await mintX509Svid(a.root, 'spiffe://a.test/a')), 'spiffe://a.test/a');
  });

  it('"§5.2 SVIDs containing more than one URI SAN MUST be rejected"', async () => {
    const leaf = await mintX509Svid(a.root, 'spiffe://a.test/one');
    const two = await issueLeaf(a.root, 'spiffe://a.test/one', { uris: ['spiffe://a.test/one', 'spiffe://b.test/two'] });
    expectRefused(chainOf(two), 'leaf-uri-san', /leaf certificate must have exactly one URI SAN, found 2/);
    expectAccepted(chainOf(leaf), 'spiffe://a.test/one');
  });
});

describe("the dev CA's own certificates satisfy every rule", () => {
  it('createRootCa, createIntermediateCa, mintX509Svid and the test leaf template verify', async () => {
    expectAccepted(chainOf(await mintX509Svid(a.root, 'spiffe://a.test/w')), 'spiffe://a.test/w');
    expectAccepted(chainOf(await mintX509Svid(a.intermediate, 'spiffe://a.test/w'), a.intermediate), 'spiffe://a.test/w');
    for (const key of ['ec-p384', 'rsa-2048', 'ed25519'] as const) {
      const leaf = await mintX509Svid(a.root, `spiffe://a.test/${key}`, { key, dnsNames: ['w.a.test'] });
      expectAccepted(chainOf(leaf), `spiffe://a.test/${key}`);
    }
    expectAccepted(chainOf(await issueCertificate(leafTemplate('spiffe://b.test/w'), b.intermediate), b.intermediate), 'spiffe://b.test/w');
  });

  it('`task-broker dev-ca mint` output verifies, and minting an SVID for a bare trust domain is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'x509svid-spec-'));
    tempDirs.push(dir);
    const ca = await initDevCa(dir, 'dev.test');
    const svid = await mintDevSvid(dir, 'spiffe://dev.test/ns/dev/sa/api', { dnsNames: ['api.dev.test'] });
    const chain = parsePemCertificates(await readFile(svid.certPath, 'utf8')).map((c) => c.der);
    const source = new TrustBundleSet([{ trustDomain: 'dev.test', authorities: parsePemCertificates(await readFile(ca.certPath, 'utf8')) }]);
    expect(verifyX509Svid(chain, source).spiffeId.toString()).toBe('spiffe://dev.test/ns/dev/sa/api');
    await expect(mintDevSvid(dir, 'spiffe://dev.test')).rejects.toThrow(/spiffe:\/\/dev\.test has no path/);
  });
});
