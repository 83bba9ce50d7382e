/**
 * Subject tokens against a test IdP made here: real keys (ES256, RS256), its JWKS in a file and
 * served over HTTP on 127.0.0.1. Each bad token gets the right kind and a reason that says what
 * is wrong; an IdP that cannot be reached is a denial, in bounded time.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SubjectIssuer } from '../../src/policy/policy.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { MAX_SUBJECT_TOKEN_CHARS, SubjectTokenVerifier, type SubjectTokenFailure, type VerifiedSubject } from '../../src/policy/subject-tokens.js';

const IDP = 'https://idp.example.com';
const AUDIENCE = 'task-broker';

interface TestKey {
  kid: string;
  alg: 'ES256' | 'RS256';
  privateKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(alg: 'ES256' | 'RS256', kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A token signed by `key`: valid for the test IdP unless `claims`/`header` say otherwise (undefined drops a claim). */
async function sign(key: TestKey, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  const now = nowSeconds();
  const payload: Record<string, unknown> = {
    iss: IDP,
    aud: AUDIENCE,
    sub: 'alice',
    sid: 'session-1',
    iat: now,
    exp: now + 300,
    groups: ['finance'],
    ...claims,
  };
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.privateKey);
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

function expectOk(result: VerifiedSubject | SubjectTokenFailure): VerifiedSubject {
  if (!result.ok) throw new Error(`expected a verified subject, got ${result.kind}: ${result.reason}`);
  return result;
}

function expectFailure(result: VerifiedSubject | SubjectTokenFailure, kind: SubjectTokenFailure['kind']): string {
  if (result.ok) throw new Error(`expected ${kind}, got a verified subject ${JSON.stringify(result.principal)}`);
  expect(result.kind, result.reason).toBe(kind);
  return result.reason;
}

let dir: string;
let es: TestKey;
let rs: TestKey;
let jwksFile: string;

/** The subject_issuers of a policy with `fields` added to the issuer (YAML flow mapping entries). */
function issuersOf(fields = '', file = jwksFile): readonly SubjectIssuer[] {
  return parsePolicy(`version: 1\nsubject_issuers:\n  - {issuer: "${IDP}", jwks_file: "${file}", audiences: ["${AUDIENCE}", other]${fields}}\nrules: []\n`, 'p')
    .subjectIssuers;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-subject-tokens-'));
  es = await makeKey('ES256', 'es-1');
  rs = await makeKey('RS256', 'rs-1');
  jwksFile = join(dir, 'idp-jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [es.jwk, rs.jwk] }));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SubjectTokenVerifier: good tokens', () => {
  const verifier = new SubjectTokenVerifier();
  afterAll(() => verifier.close());

  it('verifies an ES256 token and names the principal with its session', async () => {
    const issuers = issuersOf();
    const result = expectOk(await verifier.verify(await sign(es), issuers));
    expect(result.principal).toEqual({ iss: IDP, sub: 'alice', sid: 'session-1' });
    expect(result.claims).toMatchObject({ iss: IDP, sub: 'alice', groups: ['finance'], aud: AUDIENCE });
    expect(result.issuer).toBe(issuers[0]);
  });

  it('verifies an RS256 token; a token without a string sid has no sid', async () => {
    const issuers = issuersOf();
    expect(expectOk(await verifier.verify(await sign(rs, { sid: undefined }), issuers)).principal).toEqual({ iss: IDP, sub: 'alice' });
    expect(expectOk(await verifier.verify(await sign(rs, { sid: 42 }), issuers)).principal).toEqual({ iss: IDP, sub: 'alice' });
  });

  it('accepts any of the issuer audiences, in an aud list too', async () => {
    const issuers = issuersOf();
    expectOk(await verifier.verify(await sign(es, { aud: 'other' }), issuers));
    expectOk(await verifier.verify(await sign(es, { aud: ['someone-else', AUDIENCE] }), issuers));
  });

  it('allows the clock tolerance on exp (30 s by default)', async () => {
    expectOk(await verifier.verify(await sign(es, { exp: nowSeconds() - 10 }), issuersOf()));
  });

  it('finds the key among several that fit a header without kid', async () => {
    const a = await makeKey('ES256', 'a');
    const b = await makeKey('ES256', 'b');
    const file = join(dir, 'no-kid.json');
    const strip = (jwk: JWK): JWK => ({ ...jwk, kid: undefined });
    await writeFile(file, JSON.stringify({ keys: [strip(a.jwk), strip(b.jwk)] }));
    const token = await new SignJWT({ iss: IDP, aud: AUDIENCE, sub: 'alice', exp: nowSeconds() + 60 }).setProtectedHeader({ alg: 'ES256' }).sign(b.privateKey);
    expect(expectOk(await verifier.verify(token, issuersOf('', file))).principal.sub).toBe('alice');
    const stranger = await makeKey('ES256', 'c');
    const forged = await new SignJWT({ iss: IDP, aud: AUDIENCE, sub: 'alice', exp: nowSeconds() + 60 })
      .setProtectedHeader({ alg: 'ES256' })
      .sign(stranger.privateKey);
    expect(expectFailure(await verifier.verify(forged, issuersOf('', file)), 'permission-denied')).toBe('signature verification failed');
  });

  it('uses the `now` option for every time check', async () => {
    const past = new SubjectTokenVerifier({ now: () => new Date(Date.now() - 3_600_000) });
    try {
      // Issued "in the future" for a clock an hour behind: not yet valid by nbf.
      const reason = expectFailure(await past.verify(await sign(es, { nbf: nowSeconds() }), issuersOf()), 'invalid-argument');
      expect(reason).toMatch(/^the subject token is not valid before /);
      const future = new SubjectTokenVerifier({ now: () => new Date(Date.now() + 3_600_000) });
      expect(expectFailure(await future.verify(await sign(es), issuersOf()), 'invalid-argument')).toMatch(/^the subject token expired at /);
      future.close();
    } finally {
      past.close();
    }
  });
});

describe('SubjectTokenVerifier: bad tokens', () => {
  const verifier = new SubjectTokenVerifier();
  afterAll(() => verifier.close());

  it('refuses a forged signature: another key under the same kid', async () => {
    const forger = await makeKey('ES256', es.kid);
    expect(expectFailure(await verifier.verify(await sign(forger), issuersOf()), 'permission-denied')).toBe('signature verification failed');
  });

  it('refuses a token signed with a key the JWKS does not have (unknown kid)', async () => {
    const other = await makeKey('ES256', 'unknown-kid');
    expect(expectFailure(await verifier.verify(await sign(other), issuersOf()), 'permission-denied')).toBe(
      `signature verification failed: no key of issuer "${IDP}" fits the token's header (kid, alg)`,
    );
  });

  it('refuses a token of an issuer the policy does not name', async () => {
    expect(expectFailure(await verifier.verify(await sign(es, { iss: 'https://evil.example.com' }), issuersOf()), 'permission-denied')).toBe(
      `issuer "https://evil.example.com" is not one of the policy's subject_issuers`,
    );
    expect(expectFailure(await verifier.verify(await sign(es), []), 'permission-denied')).toBe(`issuer "${IDP}" is not one of the policy's subject_issuers`);
  });

  it('refuses a token without iss as malformed', async () => {
    expect(expectFailure(await verifier.verify(await sign(es, { iss: undefined }), issuersOf()), 'invalid-argument')).toBe(
      'the subject token has no "iss" (issuer) claim',
    );
  });

  it('refuses a wrong audience, naming the accepted ones', async () => {
    expect(expectFailure(await verifier.verify(await sign(es, { aud: 'someone-else' }), issuersOf()), 'permission-denied')).toBe(
      `the subject token's audience is not accepted by issuer "${IDP}" (accepted: ${AUDIENCE}, other)`,
    );
    expect(expectFailure(await verifier.verify(await sign(es, { aud: undefined }), issuersOf()), 'invalid-argument')).toBe(
      `the subject token has no "aud" claim (required by issuer "${IDP}")`,
    );
  });

  it('refuses an expired token, saying when it expired', async () => {
    const exp = nowSeconds() - 120;
    expect(expectFailure(await verifier.verify(await sign(es, { exp, iat: exp - 60 }), issuersOf()), 'invalid-argument')).toBe(
      `the subject token expired at ${new Date(exp * 1000).toISOString()}`,
    );
  });

  it('refuses a token without exp: it would name its principal forever', async () => {
    expect(expectFailure(await verifier.verify(await sign(es, { exp: undefined }), issuersOf()), 'invalid-argument')).toBe(
      `the subject token has no "exp" claim (required by issuer "${IDP}")`,
    );
  });

  it('refuses a token not yet valid (nbf in the future)', async () => {
    const nbf = nowSeconds() + 600;
    expect(expectFailure(await verifier.verify(await sign(es, { nbf, exp: nbf + 60 }), issuersOf()), 'invalid-argument')).toBe(
      `the subject token is not valid before ${new Date(nbf * 1000).toISOString()}`,
    );
  });

  it('refuses a token older than max_age, and one without iat when max_age is set', async () => {
    const issuers = issuersOf(', max_age: 5m');
    const reason = expectFailure(await verifier.verify(await sign(es, { iat: nowSeconds() - 3600 }), issuers), 'invalid-argument');
    expect(reason).toMatch(new RegExp(`^the subject token was issued 360\\ds ago, more than max_age 300s of issuer "${IDP}"$`));
    expect(expectFailure(await verifier.verify(await sign(es, { iat: undefined }), issuers), 'invalid-argument')).toBe(
      `the subject token has no "iat" claim (required by issuer "${IDP}")`,
    );
    expectOk(await verifier.verify(await sign(es, { iat: nowSeconds() - 200 }), issuers));
    expect(expectFailure(await verifier.verify(await sign(es, { iat: nowSeconds() + 600 }), issuers), 'invalid-argument')).toBe(
      'the subject token\'s "iat" is in the future',
    );
    // Without max_age, the age is not checked.
    expectOk(await verifier.verify(await sign(es, { iat: nowSeconds() - 3600 }), issuersOf()));
  });

  it('refuses a token missing a required claim, or without sub', async () => {
    expect(expectFailure(await verifier.verify(await sign(es, { sid: undefined }), issuersOf(', required_claims: [sid]')), 'invalid-argument')).toBe(
      `the subject token has no "sid" claim (required by issuer "${IDP}")`,
    );
    expect(expectFailure(await verifier.verify(await sign(es, { sub: undefined }), issuersOf()), 'invalid-argument')).toBe(
      `the subject token has no "sub" claim (required by issuer "${IDP}")`,
    );
    expect(expectFailure(await verifier.verify(await sign(es, { sub: '' }), issuersOf()), 'invalid-argument')).toBe(
      'the subject token\'s "sub" claim is not a non-empty string',
    );
  });

  it('refuses alg "none" (an unsigned token made by hand)', async () => {
    const now = nowSeconds();
    const unsigned = `${b64({ alg: 'none' })}.${b64({ iss: IDP, aud: AUDIENCE, sub: 'mallory', iat: now, exp: now + 60 })}.`;
    expect(expectFailure(await verifier.verify(unsigned, issuersOf()), 'permission-denied')).toBe('alg "none" is refused: an unsigned token proves nothing');
  });

  it('refuses an HS256 token, naming the algorithm', async () => {
    const secret = new Uint8Array(32).fill(7);
    const now = nowSeconds();
    const hs = await new SignJWT({ iss: IDP, aud: AUDIENCE, sub: 'mallory', exp: now + 60 }).setProtectedHeader({ alg: 'HS256', kid: es.kid }).sign(secret);
    expect(expectFailure(await verifier.verify(hs, issuersOf()), 'permission-denied')).toBe(
      `alg "HS256" is not allowed for issuer "${IDP}" (allowed: ES256, ES384, RS256, PS256, EdDSA)`,
    );
  });

  it('refuses an algorithm the issuer does not list, even one the broker supports', async () => {
    expect(expectFailure(await verifier.verify(await sign(rs), issuersOf(', algorithms: [ES256]')), 'permission-denied')).toBe(
      `alg "RS256" is not allowed for issuer "${IDP}" (allowed: ES256)`,
    );
  });

  it('refuses a token whose header alg lies about its key', async () => {
    // Signed with the ES256 key but labelled RS256 under the RSA key's kid: the RSA key does not verify it.
    const header = b64({ alg: 'RS256', kid: rs.kid });
    const genuine = (await sign(es)).split('.');
    const mislabelled = `${header}.${genuine[1]}.${genuine[2]}`;
    expect(expectFailure(await verifier.verify(mislabelled, issuersOf()), 'permission-denied')).toMatch(/^signature verification failed/);
  });

  it.each<[string, string]>([
    ['garbage', 'not a token at all'],
    ['two parts', `${b64({ alg: 'ES256' })}.${b64({ iss: IDP })}`],
    ['a header that is not JSON', `${Buffer.from('{nope').toString('base64url')}.${b64({ iss: IDP })}.sig`],
    ['a payload that is not JSON', `${b64({ alg: 'ES256' })}.${Buffer.from('[1,').toString('base64url')}.sig`],
  ])('refuses %s as not a JWT', async (_name, token) => {
    expect(expectFailure(await verifier.verify(token, issuersOf()), 'invalid-argument')).toMatch(/^the subject token is not a JWT: /);
  });

  it('refuses an empty token and one longer than 16 KiB before parsing it', async () => {
    expect(expectFailure(await verifier.verify('', issuersOf()), 'invalid-argument')).toBe('the subject token is empty');
    const long = await sign(es, { padding: 'x'.repeat(MAX_SUBJECT_TOKEN_CHARS) });
    expect(expectFailure(await verifier.verify(long, issuersOf()), 'invalid-argument')).toBe(
      `the subject token is ${long.length} characters, more than ${MAX_SUBJECT_TOKEN_CHARS}`,
    );
    expect(MAX_SUBJECT_TOKEN_CHARS).toBe(16 * 1024);
  });

  it('refuses everything once closed', async () => {
    const closed = new SubjectTokenVerifier();
    closed.close();
    expect(expectFailure(await closed.verify(await sign(es), issuersOf()), 'permission-denied')).toBe('the subject token verifier is closed');
  });
});

describe('SubjectTokenVerifier: JWKS files', () => {
  it('reads the file once per policy version (per SubjectIssuer object)', async () => {
    const verifier = new SubjectTokenVerifier();
    const file = join(dir, 'rotating.json');
    await writeFile(file, JSON.stringify({ keys: [es.jwk] }));
    const v1 = issuersOf('', file);
    expectOk(await verifier.verify(await sign(es), v1));
    // Rotated on disk: the policy version in force keeps the keys it read...
    await writeFile(file, JSON.stringify({ keys: [rs.jwk] }));
    expectOk(await verifier.verify(await sign(es), v1));
    expect(expectFailure(await verifier.verify(await sign(rs), v1), 'permission-denied')).toMatch(/^signature verification failed: no key/);
    // ...and the next policy version reads the file again.
    const v2 = issuersOf('', file);
    expectOk(await verifier.verify(await sign(rs), v2));
    expect(expectFailure(await verifier.verify(await sign(es), v2), 'permission-denied')).toMatch(/^signature verification failed: no key/);
    verifier.close();
  });

  it('denies, naming the path, for a file missing, not JSON, not a JWKS, too large or holding a private key; and reads it again once fixed', async () => {
    const verifier = new SubjectTokenVerifier();
    const token = await sign(es);
    const file = join(dir, 'broken.json');
    const issuers = issuersOf('', file);
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toMatch(new RegExp(`^the JWKS file ${file} cannot be read: ENOENT`));

    await writeFile(file, '{"keys": [');
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toMatch(new RegExp(`^the JWKS file ${file} is not JSON: `));

    await writeFile(file, '{"key": []}');
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toBe(
      `the JWKS file ${file} is not a JWKS (a JSON object with a "keys" list)`,
    );

    await writeFile(file, JSON.stringify({ keys: ['not a key'] }));
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toMatch(new RegExp(`^the JWKS file ${file} is not a valid JWKS: `));

    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    await writeFile(file, JSON.stringify({ keys: [es.jwk, await exportJWK(privateKey)] }));
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toBe(
      `the JWKS file ${file} holds secret key material (keys[1]); publish public keys only`,
    );

    await writeFile(file, JSON.stringify({ keys: [es.jwk], padding: 'x'.repeat(1 << 20) }));
    expect(expectFailure(await verifier.verify(token, issuers), 'permission-denied')).toBe(`the JWKS file ${file} is more than 1048576 bytes`);

    // A failed read is not kept: fixing the file is enough, without a new policy version.
    await writeFile(file, JSON.stringify({ keys: [es.jwk] }));
    expectOk(await verifier.verify(token, issuers));
    verifier.close();
  });
});

describe('SubjectTokenVerifier: JWKS URLs', () => {
  let server: Server;
  let base: string;
  let served: { status: number; body: string };
  let requests = 0;

  beforeAll(async () => {
    served = { status: 200, body: JSON.stringify({ keys: [es.jwk, rs.jwk] }) };
    server = createServer((req, res) => {
      requests++;
      if (req.url === '/hang') return; // never answers
      // /declared says its length up front; the others stream (chunked), so both bounds are exercised.
      const length = req.url === '/declared' ? { 'content-length': Buffer.byteLength(served.body) } : {};
      res.writeHead(served.status, { 'content-type': 'application/json', ...length }).end(served.body);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  });

  function urlIssuers(path: string): readonly SubjectIssuer[] {
    return parsePolicy(`version: 1\nsubject_issuers:\n  - {issuer: "${IDP}", jwks_url: "${base}${path}", audiences: ["${AUDIENCE}"]}\nrules: []\n`, 'p')
      .subjectIssuers;
  }

  it('fetches the keys once and verifies with them', async () => {
    const verifier = new SubjectTokenVerifier();
    const issuers = urlIssuers('/jwks');
    const before = requests;
    expect(expectOk(await verifier.verify(await sign(es), issuers)).principal).toEqual({ iss: IDP, sub: 'alice', sid: 'session-1' });
    expectOk(await verifier.verify(await sign(rs), issuers));
    expect(requests - before).toBe(1);
    const forger = await makeKey('ES256', es.kid);
    expect(expectFailure(await verifier.verify(await sign(forger), issuers), 'permission-denied')).toBe('signature verification failed');
    verifier.close();
  });

  it('denies when the IdP answers with an error or not a JWKS', async () => {
    const verifier = new SubjectTokenVerifier();
    served = { status: 503, body: 'down for maintenance' };
    try {
      expect(expectFailure(await verifier.verify(await sign(es), urlIssuers('/jwks-503')), 'permission-denied')).toBe(
        `could not fetch the JWKS of ${base}/jwks-503: Expected 200 OK from the JSON Web Key Set HTTP response`,
      );
      served = { status: 200, body: '{"not": "a jwks"}' };
      expect(expectFailure(await verifier.verify(await sign(es), urlIssuers('/jwks-bad')), 'permission-denied')).toMatch(
        new RegExp(`^could not fetch the JWKS of ${base}/jwks-bad: JSON Web Key Set malformed`),
      );
      served = { status: 200, body: JSON.stringify({ keys: [es.jwk], padding: 'x'.repeat(1 << 20) }) };
      expect(expectFailure(await verifier.verify(await sign(es), urlIssuers('/declared')), 'permission-denied')).toBe(
        `could not fetch the JWKS of ${base}/declared: the JWKS is ${served.body.length} bytes, more than 1048576`,
      );
      expect(expectFailure(await verifier.verify(await sign(es), urlIssuers('/jwks-big')), 'permission-denied')).toBe(
        `could not fetch the JWKS of ${base}/jwks-big: the JWKS is more than 1048576 bytes`,
      );
    } finally {
      served = { status: 200, body: JSON.stringify({ keys: [es.jwk, rs.jwk] }) };
      verifier.close();
    }
  });

  it('denies, in bounded time, when the IdP does not answer', async () => {
    const verifier = new SubjectTokenVerifier({ fetchTimeoutMs: 300 });
    const started = Date.now();
    expect(expectFailure(await verifier.verify(await sign(es), urlIssuers('/hang')), 'permission-denied')).toBe(
      `could not fetch the JWKS of ${base}/hang: timed out`,
    );
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(5_000);
    verifier.close();
  });

  it('denies when nothing listens at the URL', async () => {
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, 'close');
    const verifier = new SubjectTokenVerifier({ fetchTimeoutMs: 2_000 });
    const issuers = parsePolicy(
      `version: 1\nsubject_issuers:\n  - {issuer: "${IDP}", jwks_url: "http://127.0.0.1:${port}/jwks", audiences: ["${AUDIENCE}"]}\nrules: []\n`,
      'p',
    ).subjectIssuers;
    expect(expectFailure(await verifier.verify(await sign(es), issuers), 'permission-denied')).toMatch(
      new RegExp(`^could not fetch the JWKS of http://127\\.0\\.0\\.1:${port}/jwks: fetch failed \\(.*ECONNREFUSED`),
    );
    verifier.close();
  });
});
