import { createHash, KeyObject, sign } from 'node:crypto';
import {
  calculateJwkThumbprint,
  CompactSign,
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
  type JWTPayload,
} from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { certificateThumbprint, parsePemCertificates } from '../../src/spiffe/certificate.js';
import type { SigningKey, TokenAlg, VerificationKey, VerificationKeySource } from '../../src/tokens/keyring.js';
import { checkTaskToken, signTaskToken, TASK_TOKEN_TYPE, x5tS256, type SignatureCheck, type TaskTokenClaims } from '../../src/tokens/task-token.js';
import { trustDomainPki } from '../helpers/pki.js';
import { taskTokenClaims, TOKEN_ISSUER } from '../helpers/task-token.js';

const NOW = new Date('2030-01-01T00:00:00Z');
const NOW_SEC = NOW.getTime() / 1000;

function claims(overrides: Partial<TaskTokenClaims> = {}): TaskTokenClaims {
  return taskTokenClaims(NOW, { jti: 'tok-1', scope: 'read write', cnf: { 'x5t#S256': x5tS256(Buffer.from('certificate')) }, ...overrides });
}

async function makeKey(alg: TokenAlg): Promise<{ key: SigningKey; verification: VerificationKey }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  return { key: { kid, alg, privateKey, publicJwk: { ...jwk, kid, alg, use: 'sig' } }, verification: { alg, publicKey } };
}

class MemoryKeys implements VerificationKeySource {
  readonly keys = new Map<string, VerificationKey>();
  verificationKey(kid: string): Promise<VerificationKey | undefined> {
    return Promise.resolve(this.keys.get(kid));
  }
}

/** Signs anything, bypassing signTaskToken's own checks: what an attacker or a buggy issuer could send. */
function rawSign(key: SigningKey, payload: JWTPayload, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: TASK_TOKEN_TYPE, ...header }).sign(key.privateKey);
}

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** A compact JWS over exactly these bytes, signed by jose: for payloads SignJWT would refuse. */
function rawSignBytes(key: SigningKey, payload: Uint8Array | string): Promise<string> {
  const bytes = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload;
  return new CompactSign(bytes).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: TASK_TOKEN_TYPE }).sign(key.privateKey);
}

function segments(token: string): [string, string, string] {
  return token.split('.') as [string, string, string];
}

/** The same key as a node:crypto KeyObject (the keyring hands out KeyObjects; makeKey gives CryptoKeys). */
function keyObject(key: CryptoKey | KeyObject): KeyObject {
  return key instanceof KeyObject ? key : KeyObject.from(key);
}

function failure(check: SignatureCheck): Extract<SignatureCheck, { ok: false }> {
  if (check.ok) throw new Error('expected the check to fail');
  return check;
}

const BAD_SIGNATURE = { ok: false, reason: 'bad-signature', detail: 'signature verification failed' };

describe.each<TokenAlg>(['ES256', 'EdDSA'])('task tokens with %s', (alg) => {
  let key: SigningKey;
  let keys: MemoryKeys;
  const check = (token: string, now = NOW, clockToleranceSeconds?: number) => checkTaskToken(token, keys, { issuer: TOKEN_ISSUER, now, clockToleranceSeconds });

  beforeAll(async () => {
    const made = await makeKey(alg);
    key = made.key;
    keys = new MemoryKeys();
    keys.keys.set(key.kid, made.verification);
  });

  it('signs with header { alg, kid, typ: task+jwt } and verifies to the same claims', async () => {
    const token = await signTaskToken(key, claims());
    expect(decodeProtectedHeader(token)).toEqual({ alg, kid: key.kid, typ: 'task+jwt' });
    const result = await check(token);
    expect(result).toEqual({ ok: true, claims: claims(), kid: key.kid });
  });

  it('refuses to sign claims that would not pass the check', async () => {
    await expect(signTaskToken(key, claims({ task_id: '' }))).rejects.toThrow('refusing to sign task token: claim task_id must be a non-empty string');
    await expect(signTaskToken(key, claims({ exp: NOW_SEC + 0.5 }))).rejects.toThrow(/claim exp must be a NumericDate/);
    await expect(signTaskToken(key, { ...claims(), cnf: {} as TaskTokenClaims['cnf'] })).rejects.toThrow(/x5t#S256/);
  });

  describe('interoperability with jose', () => {
    it('jose verifies what signTaskToken signs, with the key as published in the JWKS', async () => {
      const token = await signTaskToken(key, claims());
      const jwks = createLocalJWKSet({ keys: [key.publicJwk] });
      const verified = await jwtVerify(token, jwks, {
        algorithms: [alg],
        typ: TASK_TOKEN_TYPE,
        issuer: TOKEN_ISSUER,
        audience: 'spiffe://a.test/target',
        currentDate: NOW,
        requiredClaims: ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti', 'task_id', 'task_hash', 'scope', 'cnf'],
      });
      expect(verified.protectedHeader).toEqual({ alg, kid: key.kid, typ: 'task+jwt' });
      expect(verified.payload).toEqual(claims());
    });

    it('writes the header as {"alg","kid","typ"} and the claims in their given order, as jose did', async () => {
      const token = await signTaskToken(key, claims());
      const [header, payload, signature] = segments(token);
      expect(Buffer.from(header, 'base64url').toString()).toBe(`{"alg":"${alg}","kid":"${key.kid}","typ":"task+jwt"}`);
      expect(Buffer.from(payload, 'base64url').toString()).toBe(JSON.stringify(claims()));
      expect(Buffer.from(signature, 'base64url')).toHaveLength(64);
      const byJose = await new SignJWT({ ...claims() }).setProtectedHeader({ alg, kid: key.kid, typ: TASK_TOKEN_TYPE }).sign(key.privateKey);
      expect(segments(token).slice(0, 2)).toEqual(segments(byJose).slice(0, 2));
      // Ed25519 signatures are deterministic: the whole token is byte for byte jose's.
      if (alg === 'EdDSA') expect(token).toBe(byJose);
    });

    it('checkTaskToken accepts a token signed by jose', async () => {
      const token = await new SignJWT({ ...claims() }).setProtectedHeader({ alg, kid: key.kid, typ: TASK_TOKEN_TYPE }).sign(key.privateKey);
      expect(await check(token)).toEqual({ ok: true, claims: claims(), kid: key.kid });
    });

    it('signs and verifies with KeyObjects (what the keyring holds) as well as CryptoKeys', async () => {
      const asKeyObjects = new MemoryKeys();
      asKeyObjects.keys.set(key.kid, { alg, publicKey: keyObject((await keys.verificationKey(key.kid))!.publicKey) });
      const token = await signTaskToken({ ...key, privateKey: keyObject(key.privateKey) }, claims());
      expect(await checkTaskToken(token, asKeyObjects, { issuer: TOKEN_ISSUER, now: NOW })).toEqual({ ok: true, claims: claims(), kid: key.kid });
      expect(await check(token)).toEqual({ ok: true, claims: claims(), kid: key.kid });
    });
  });

  describe('malformed', () => {
    it('garbage and non-compact input', async () => {
      for (const token of ['', 'garbage', 'a.b', 'a.b.c.d', '...', `${'a'.repeat(20_000)}.b.c`, 'eyJ.e30.!!']) {
        expect(failure(await check(token)).reason).toBe('malformed');
      }
      const notJson = `${Buffer.from('{not json').toString('base64url')}.${b64(claims())}.c2ln`;
      expect(failure(await check(notJson))).toMatchObject({ reason: 'malformed', detail: 'not a compact JWS: header is not JSON' });
    });

    it('a JWS that is not typ task+jwt, or has no kid', async () => {
      const jwt = await rawSign(key, { ...claims() }, { typ: 'JWT' });
      expect(failure(await check(jwt))).toMatchObject({ reason: 'malformed', detail: 'header typ is "JWT", expected task+jwt' });
      const untyped = await new SignJWT({ ...claims() }).setProtectedHeader({ alg, kid: key.kid }).sign(key.privateKey);
      expect(failure(await check(untyped))).toMatchObject({ reason: 'malformed', detail: 'header typ is missing, expected task+jwt' });
      const noKid = await new SignJWT({ ...claims() }).setProtectedHeader({ alg, typ: TASK_TOKEN_TYPE }).sign(key.privateKey);
      expect(failure(await check(noKid))).toMatchObject({ reason: 'malformed', detail: 'header has no kid' });
    });

    it('accepts the typ in its media-type form, as RFC 7515 allows', async () => {
      const token = await rawSign(key, { ...claims() }, { typ: 'application/Task+JWT' });
      expect((await check(token)).ok).toBe(true);
    });

    it('alg none and HMAC tokens, even with a known kid', async () => {
      const none = `${b64({ alg: 'none', typ: TASK_TOKEN_TYPE, kid: key.kid })}.${b64(claims())}.`;
      expect(failure(await check(none))).toMatchObject({ reason: 'malformed', detail: 'header alg "none" is not accepted (ES256, EdDSA)' });
      // The classic key-confusion attempt: HMAC with the public key as the secret.
      const secret = Buffer.from(JSON.stringify(key.publicJwk));
      const hs256 = await new SignJWT({ ...claims() }).setProtectedHeader({ alg: 'HS256', typ: TASK_TOKEN_TYPE, kid: key.kid }).sign(secret);
      expect(failure(await check(hs256))).toMatchObject({ reason: 'malformed', detail: 'header alg "HS256" is not accepted (ES256, EdDSA)' });
    });

    it('a missing required claim', async () => {
      for (const name of ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti', 'task_id', 'task_hash', 'scope', 'cnf'] as const) {
        const payload: Record<string, unknown> = { ...claims() };
        delete payload[name];
        const result = failure(await check(await rawSign(key, payload)));
        expect(result.reason, name).toBe('malformed');
        expect(result.detail, name).toContain(name);
      }
    });

    it('claims of the wrong type', async () => {
      const cases: Array<[string, Record<string, unknown>, RegExp]> = [
        ['empty task_id', { task_id: '' }, /task_id must be a non-empty string/],
        ['numeric scope', { scope: 7 }, /scope must be a non-empty string/],
        ['aud array', { aud: ['spiffe://a.test/target'] }, /aud must be a non-empty string/],
        ['fractional iat', { iat: NOW_SEC + 0.25 }, /iat must be a NumericDate/],
        ['string exp', { exp: String(NOW_SEC + 300) }, /"exp" claim must be a number/],
        ['cnf without x5t#S256', { cnf: { jkt: 'x' } }, /x5t#S256/],
        ['cnf not an object', { cnf: 'x' }, /cnf must be an object/],
      ];
      for (const [name, overrides, detail] of cases) {
        const result = failure(await check(await rawSign(key, { ...claims(), ...overrides })));
        expect(result.reason, name).toBe('malformed');
        expect(result.detail, name).toMatch(detail);
      }
    });

    it('a token from another issuer', async () => {
      const result = failure(await check(await rawSign(key, { ...claims(), iss: 'spiffe://evil.test/broker' })));
      expect(result).toMatchObject({ reason: 'malformed', detail: 'unexpected "iss" claim value' });
    });

    it('a crit header, which names extensions we do not understand (RFC 7515 4.1.11)', async () => {
      const extension = await new SignJWT({ ...claims() })
        .setProtectedHeader({ alg, kid: key.kid, typ: TASK_TOKEN_TYPE, crit: ['urn:example:ext'], 'urn:example:ext': 1 })
        .sign(key.privateKey, { crit: { 'urn:example:ext': true } });
      expect(failure(await check(extension))).toMatchObject({ reason: 'malformed', detail: expect.stringMatching(/crit/) });
      // jose itself understands b64 (RFC 7797) and would accept this one; we refuse any crit.
      const b64True = await rawSign(key, { ...claims() }, { crit: ['b64'], b64: true });
      expect(failure(await check(b64True))).toMatchObject({ reason: 'malformed', detail: expect.stringMatching(/crit/) });
      const empty = `${b64({ alg, kid: key.kid, typ: TASK_TOKEN_TYPE, crit: [] })}.${b64(claims())}.${'A'.repeat(86)}`;
      expect(failure(await check(empty))).toMatchObject({ reason: 'malformed', detail: expect.stringMatching(/crit/) });
    });

    it('an authentic payload that is not a JSON object', async () => {
      for (const payload of ['[]', '"claims"', 'null', '42', 'not json', new Uint8Array([0x7b, 0xff, 0x7d])]) {
        const result = failure(await check(await rawSignBytes(key, payload)));
        expect(result, String(payload)).toEqual({ ok: false, reason: 'malformed', detail: 'payload is not a JSON object' });
      }
    });

    it('segments that are not exact base64url (a dangling character) or a header that is not UTF-8', async () => {
      const [header, payload, signature] = segments(await signTaskToken(key, claims()));
      // 86 characters carry 64 bytes; 89 leave one character that encodes no whole byte.
      expect(failure(await check(`${header}.${payload}.${signature}AAA`))).toMatchObject({
        reason: 'malformed',
        detail: 'not a compact JWS: signature is not base64url',
      });
      const headerBytes = Buffer.concat([Buffer.from(`{"alg":"${alg}","kid":"${key.kid}","typ":"task+jwt","x":"`), Buffer.from([0xff]), Buffer.from('"}')]);
      expect(failure(await check(`${headerBytes.toString('base64url')}.${payload}.${signature}`))).toMatchObject({
        reason: 'malformed',
        detail: 'not a compact JWS: header is not base64url-encoded UTF-8',
      });
    });
  });

  describe('bad-signature', () => {
    it('a tampered payload', async () => {
      const [header, , signature] = (await signTaskToken(key, claims())).split('.');
      const tampered = `${header}.${b64(claims({ scope: 'admin' }))}.${signature}`;
      expect(failure(await check(tampered))).toMatchObject({ reason: 'bad-signature', detail: 'signature verification failed' });
    });

    it('a tampered signature', async () => {
      const token = await signTaskToken(key, claims());
      const [header, payload, signature] = token.split('.') as [string, string, string];
      const sig = Buffer.from(signature, 'base64url');
      sig[5]! ^= 0x40;
      expect(failure(await check(`${header}.${payload}.${sig.toString('base64url')}`)).reason).toBe('bad-signature');
    });

    it('an unknown kid', async () => {
      const stranger = await makeKey(alg);
      const result = failure(await check(await signTaskToken(stranger.key, claims())));
      expect(result).toMatchObject({ reason: 'bad-signature', detail: `unknown signing key "${stranger.key.kid}"` });
    });

    it('another key claiming a known kid', async () => {
      const impostor = await makeKey(alg);
      const token = await signTaskToken({ ...impostor.key, kid: key.kid }, claims());
      expect(failure(await check(token))).toMatchObject({ reason: 'bad-signature', detail: 'signature verification failed' });
    });

    it('a header alg different from the key alg', async () => {
      const otherAlg: TokenAlg = alg === 'ES256' ? 'EdDSA' : 'ES256';
      const other = await makeKey(otherAlg);
      // Signed correctly with an otherAlg key, but labelled with the kid of our alg's key.
      const token = await signTaskToken({ ...other.key, kid: key.kid }, claims());
      expect(failure(await check(token))).toMatchObject({
        reason: 'bad-signature',
        detail: `header alg ${otherAlg} does not match signing key "${key.kid}" (${alg})`,
      });
    });

    it('a header that names the other alg over a signature by the right key', async () => {
      const otherAlg: TokenAlg = alg === 'ES256' ? 'EdDSA' : 'ES256';
      const [, payload, signature] = segments(await signTaskToken(key, claims()));
      const relabelled = `${b64({ alg: otherAlg, kid: key.kid, typ: TASK_TOKEN_TYPE })}.${payload}.${signature}`;
      expect(failure(await check(relabelled))).toMatchObject({
        reason: 'bad-signature',
        detail: `header alg ${otherAlg} does not match signing key "${key.kid}" (${alg})`,
      });
    });

    it('a truncated or extended signature', async () => {
      const [header, payload, signature] = segments(await signTaskToken(key, claims()));
      const bytes = Buffer.from(signature, 'base64url');
      for (const sig of [bytes.subarray(0, 63), bytes.subarray(0, 32), bytes.subarray(0, 1), Buffer.concat([bytes, Buffer.from([0])])]) {
        expect(failure(await check(`${header}.${payload}.${sig.toString('base64url')}`)), `${sig.length} bytes`).toEqual(BAD_SIGNATURE);
      }
    });

    // ES256 only: Ed25519 has a single signature encoding.
    if (alg === 'ES256')
      it('an ES256 signature in DER rather than r || s, even though it is genuine', async () => {
        const [header, payload] = segments(await signTaskToken(key, claims()));
        const input = Buffer.from(`${header}.${payload}`);
        const der = sign('sha256', input, { key: keyObject(key.privateKey), dsaEncoding: 'der' });
        expect(failure(await check(`${header}.${payload}.${der.toString('base64url')}`))).toEqual(BAD_SIGNATURE);
        const p1363 = sign('sha256', input, { key: keyObject(key.privateKey), dsaEncoding: 'ieee-p1363' });
        expect((await check(`${header}.${payload}.${p1363.toString('base64url')}`)).ok).toBe(true);
      });
  });

  describe('expired', () => {
    it('at and after exp, carrying the authentic claims', async () => {
      const token = await signTaskToken(key, claims());
      const atExp = new Date((NOW_SEC + 300) * 1000);
      const result = failure(await check(token, atExp));
      expect(result).toMatchObject({ reason: 'expired', detail: 'expired at 2030-01-01T00:05:00.000Z' });
      expect(result.claims).toEqual(claims());
      expect(failure(await check(token, new Date(atExp.getTime() + 3_600_000))).reason).toBe('expired');
      expect((await check(token, new Date(atExp.getTime() - 1000))).ok).toBe(true);
    });

    it('before nbf', async () => {
      const token = await signTaskToken(key, claims({ nbf: NOW_SEC + 60 }));
      expect(failure(await check(token))).toMatchObject({ reason: 'expired', detail: 'not yet valid: nbf is 2030-01-01T00:01:00.000Z' });
      expect((await check(token, new Date((NOW_SEC + 60) * 1000))).ok).toBe(true);
    });

    it('honours the clock tolerance', async () => {
      const token = await signTaskToken(key, claims());
      const atExp = new Date((NOW_SEC + 300) * 1000);
      expect((await check(token, atExp, 5)).ok).toBe(true);
      expect(failure(await check(token, new Date(atExp.getTime() + 5000), 5)).reason).toBe('expired');
    });

    it('nbf in the future, within and beyond the tolerance', async () => {
      const token = await signTaskToken(key, claims({ nbf: NOW_SEC + 5 }));
      expect((await check(token, NOW, 5)).ok).toBe(true);
      const result = failure(await check(token, NOW, 4));
      expect(result).toMatchObject({ reason: 'expired', detail: 'not yet valid: nbf is 2030-01-01T00:00:05.000Z' });
      expect(result.claims).toEqual(claims({ nbf: NOW_SEC + 5 }));
    });

    it('exp in the past, within and beyond the tolerance', async () => {
      const past = claims({ iat: NOW_SEC - 300, nbf: NOW_SEC - 300, exp: NOW_SEC - 3 });
      const token = await signTaskToken(key, past);
      expect((await check(token, NOW, 4)).ok).toBe(true);
      for (const tolerance of [undefined, 0, 2, 3]) {
        const result = failure(await check(token, NOW, tolerance));
        expect(result, String(tolerance)).toEqual({ ok: false, reason: 'expired', detail: 'expired at 2029-12-31T23:59:57.000Z', claims: past });
      }
    });

    it('compares in whole seconds: the last millisecond before exp is still valid', async () => {
      const token = await signTaskToken(key, claims());
      expect((await check(token, new Date((NOW_SEC + 300) * 1000 - 1))).ok).toBe(true);
    });

    it('an expired token with a bad signature is bad-signature, not expired', async () => {
      const [header, , signature] = (await signTaskToken(key, claims())).split('.');
      const tampered = `${header}.${b64(claims({ exp: NOW_SEC - 10 }))}.${signature}`;
      expect(failure(await check(tampered)).reason).toBe('bad-signature');
    });
  });
});

describe('checkTaskToken internal failures', () => {
  it('throws when the key source fails, rather than blaming the token', async () => {
    const { key } = await makeKey('ES256');
    const token = await signTaskToken(key, claims());
    const broken: VerificationKeySource = { verificationKey: () => Promise.reject(new Error('database is down')) };
    await expect(checkTaskToken(token, broken, { issuer: TOKEN_ISSUER, now: NOW })).rejects.toThrow('database is down');
  });

  it('throws for a key that does not fit its algorithm, for signing and for verification', async () => {
    const es = await makeKey('ES256');
    const ed = await makeKey('EdDSA');
    await expect(signTaskToken({ ...es.key, privateKey: ed.key.privateKey }, claims())).rejects.toThrow(
      'task token signing key for ES256 must be a private P-256 key, got a private ed25519 key',
    );
    await expect(signTaskToken({ ...es.key, privateKey: es.verification.publicKey }, claims())).rejects.toThrow(
      /must be a private P-256 key, got a public ec prime256v1 key/,
    );
    const token = await signTaskToken(es.key, claims());
    const misfiled: VerificationKeySource = { verificationKey: () => Promise.resolve({ alg: 'ES256', publicKey: ed.verification.publicKey }) };
    await expect(checkTaskToken(token, misfiled, { issuer: TOKEN_ISSUER, now: NOW })).rejects.toThrow(
      'task token verification key for ES256 must be a public P-256 key, got a public ed25519 key',
    );
  });

  it('throws for options that make no sense, whatever the token', async () => {
    const { key, verification } = await makeKey('EdDSA');
    const keys = new MemoryKeys();
    keys.keys.set(key.kid, verification);
    const token = await signTaskToken(key, claims());
    await expect(checkTaskToken(token, keys, { issuer: TOKEN_ISSUER, now: new Date(Number.NaN) })).rejects.toThrow(/options.now/);
    await expect(checkTaskToken('garbage', keys, { issuer: TOKEN_ISSUER, now: NOW, clockToleranceSeconds: -1 })).rejects.toThrow(/clockToleranceSeconds/);
  });

  it('never throws for a corrupted token, and accepts one only if it decodes to the same bytes', async () => {
    for (const alg of ['ES256', 'EdDSA'] as const) {
      const { key, verification } = await makeKey(alg);
      const keys = new MemoryKeys();
      keys.keys.set(key.kid, verification);
      const token = await signTaskToken(key, claims());
      const decoded = segments(token).map((part) => Buffer.from(part, 'base64url').toString('hex'));
      for (let i = 0; i < token.length; i++) {
        for (const replacement of ['A', 'g', '_', '.', '']) {
          const mutated = token.slice(0, i) + replacement + token.slice(i + 1);
          if (mutated === token) continue;
          const result = await checkTaskToken(mutated, keys, { issuer: TOKEN_ISSUER, now: NOW });
          if (result.ok)
            expect(
              segments(mutated).map((part) => Buffer.from(part, 'base64url').toString('hex')),
              `${alg} ${i} ${replacement}`,
            ).toEqual(decoded);
        }
      }
    }
  });
});

describe('x5tS256', () => {
  it('is base64url SHA-256 of the DER certificate (RFC 8705), the same function as the SPIFFE layer uses', async () => {
    expect(x5tS256(new Uint8Array())).toBe('47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU');
    const pki = await trustDomainPki('a.test');
    const cert = parsePemCertificates(pki.root.pem)[0]!;
    expect(x5tS256(cert.der)).toBe(createHash('sha256').update(cert.der).digest('base64url'));
    expect(x5tS256(cert.der)).toBe(cert.thumbprint);
    expect(x5tS256).toBe(certificateThumbprint);
  });
});
