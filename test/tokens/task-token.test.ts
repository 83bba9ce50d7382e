import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, decodeProtectedHeader, exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { certificateThumbprint, parsePemCertificates } from '../../src/spiffe/certificate.js';
import type { SigningKey, TokenAlg, VerificationKey, VerificationKeySource } from '../../src/tokens/keyring.js';
import { checkTaskToken, signTaskToken, TASK_TOKEN_TYPE, x5tS256, type SignatureCheck, type TaskTokenClaims } from '../../src/tokens/task-token.js';
import { trustDomainPki } from '../helpers/pki.js';

const ISSUER = 'spiffe://broker.test/task-broker';
const NOW = new Date('2030-01-01T00:00:00Z');
const NOW_SEC = NOW.getTime() / 1000;

function claims(overrides: Partial<TaskTokenClaims> = {}): TaskTokenClaims {
  return {
    iss: ISSUER,
    sub: 'spiffe://a.test/workload',
    aud: 'spiffe://a.test/target',
    iat: NOW_SEC,
    nbf: NOW_SEC,
    exp: NOW_SEC + 300,
    jti: 'tok-1',
    task_id: 'task-1',
    task_hash: 'Ll0x9m3sPqLQ8pEhGx3vV7o1sKXc5qYkQvFfJbqJgkA',
    scope: 'read write',
    cnf: { 'x5t#S256': x5tS256(Buffer.from('certificate')) },
    ...overrides,
  };
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

function failure(check: SignatureCheck): Extract<SignatureCheck, { ok: false }> {
  if (check.ok) throw new Error('expected the check to fail');
  return check;
}

describe.each<TokenAlg>(['ES256', 'EdDSA'])('task tokens with %s', (alg) => {
  let key: SigningKey;
  let keys: MemoryKeys;
  const check = (token: string, now = NOW, clockToleranceSeconds?: number) => checkTaskToken(token, keys, { issuer: ISSUER, now, clockToleranceSeconds });

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
      expect(failure(await check(token))).toMatchObject({ reason: 'bad-signature', detail: `header alg ${otherAlg} does not match signing key "${key.kid}" (${alg})` });
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
    await expect(checkTaskToken(token, broken, { issuer: ISSUER, now: NOW })).rejects.toThrow('database is down');
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
