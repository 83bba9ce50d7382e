/**
 * A test identity provider: its own ES256 key pair, a JWKS file, and subject tokens signed with
 * it (or forged, or unsigned) for the broker's subject_issuers.
 */
import { exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const IDP_ISSUER = 'https://idp.test';
export const IDP_AUDIENCE = 'task-broker';

export interface TestIdp {
  issuer: string;
  jwksFile: string;
  /** A subject token signed by the IdP: sub, sid, aud and a fresh iat/exp unless overridden. */
  token(claims?: JWTPayload, options?: { kid?: string; expiresIn?: string | number }): Promise<string>;
  /** Same claims, signed by another key under the IdP's kid: a forgery. */
  forged(claims?: JWTPayload): Promise<string>;
  /** An unsecured JWT (alg none). */
  unsigned(claims?: JWTPayload): string;
}

export async function testIdp(issuer = IDP_ISSUER): Promise<TestIdp> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const forger = await generateKeyPair('ES256');
  const kid = 'idp-key-1';
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  const dir = await mkdtemp(join(tmpdir(), 'tb-idp-'));
  const jwksFile = join(dir, 'jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [jwk] }));

  const payload = (claims: JWTPayload): JWTPayload => ({ iss: issuer, aud: IDP_AUDIENCE, sub: 'alice', sid: 'session-1', ...claims });
  const sign = (claims: JWTPayload, key: CryptoKey, options: { kid?: string; expiresIn?: string | number } = {}) => {
    const body = payload(claims);
    const jwt = new SignJWT(body).setProtectedHeader({ alg: 'ES256', kid: options.kid ?? kid, typ: 'JWT' });
    if (body.iat === undefined) jwt.setIssuedAt();
    if (body.exp === undefined) jwt.setExpirationTime(options.expiresIn ?? '10m');
    return jwt.sign(key);
  };
  return {
    issuer,
    jwksFile,
    token: (claims = {}, options = {}) => sign(claims, privateKey, options),
    forged: (claims = {}) => sign(claims, forger.privateKey),
    unsigned: (claims = {}) => {
      const now = Math.floor(Date.now() / 1000);
      const body = { iat: now, exp: now + 600, ...payload(claims) };
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(body)}.`;
    },
  };
}

/** A policy's `subject_issuers` block (top level, with its key) that trusts `idp`: ES256, the test audience, tokens at most an hour old. */
export function subjectIssuersYaml(idp: TestIdp): string {
  return `subject_issuers:
  - issuer: ${idp.issuer}
    jwks_file: ${idp.jwksFile}
    audiences: [${IDP_AUDIENCE}]
    algorithms: [ES256]
    max_age: 1h`;
}
