/**
 * The task token: a compact JWS with `typ: task+jwt` and a `kid`, whose claims bind it to one
 * task, one audience, one caller and the caller's certificate (RFC 8705 `cnf`).
 *
 * checkTaskToken answers "is this an authentic, well-formed, currently valid token from us?".
 * Revocation, audience and binding checks need the database and belong to the caller.
 */
import { errors, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import type { SigningKey, TokenAlg, VerificationKeySource } from './keyring.js';
import { isTokenAlg } from './keyring.js';

export { certificateThumbprint as x5tS256 } from '../spiffe/certificate.js';

export interface TaskTokenClaims {
  iss: string;
  /** The caller's SPIFFE ID. */
  sub: string;
  /** The target's SPIFFE ID. */
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  task_id: string;
  task_hash: string;
  /** Space-separated. */
  scope: string;
  cnf: { 'x5t#S256': string };
}

export const TASK_TOKEN_TYPE = 'task+jwt';

export type SignatureCheck =
  | { ok: true; claims: TaskTokenClaims; kid: string }
  | { ok: false; reason: 'malformed' | 'bad-signature' | 'expired'; detail: string; claims?: Partial<TaskTokenClaims> };

export interface CheckTaskTokenOptions {
  issuer: string;
  now: Date;
  /** Leeway for exp and nbf; default 0. */
  clockToleranceSeconds?: number;
}

/** Far above any token we issue; bounds the work spent on junk input. */
const MAX_TOKEN_LENGTH = 16 * 1024;
const STRING_CLAIMS = ['iss', 'sub', 'aud', 'jti', 'task_id', 'task_hash', 'scope'] as const;
const DATE_CLAIMS = ['iat', 'nbf', 'exp'] as const;
const REQUIRED_CLAIMS = [...STRING_CLAIMS, ...DATE_CLAIMS, 'cnf'];
const BASE64URL = /^[A-Za-z0-9_-]+$/;

export async function signTaskToken(key: SigningKey, claims: TaskTokenClaims): Promise<string> {
  const problem = claimsProblem(claims as unknown as Record<string, unknown>);
  if (problem) throw new Error(`refusing to sign task token: ${problem}`);
  return new SignJWT({ ...claims, cnf: { ...claims.cnf } }).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: TASK_TOKEN_TYPE }).sign(key.privateKey);
}

/** Verifies signature, header, claim shapes, issuer and time. Never throws for a bad token. */
export async function checkTaskToken(token: string, keys: VerificationKeySource, options: CheckTaskTokenOptions): Promise<SignatureCheck> {
  const header = readHeader(token);
  if (typeof header === 'string') return { ok: false, reason: 'malformed', detail: header };
  const { kid, alg } = header;

  const key = await keys.verificationKey(kid);
  if (!key) return { ok: false, reason: 'bad-signature', detail: `unknown signing key ${quote(kid)}` };
  if (key.alg !== alg) return { ok: false, reason: 'bad-signature', detail: `header alg ${alg} does not match signing key ${quote(kid)} (${key.alg})` };

  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, key.publicKey, {
      algorithms: [key.alg],
      typ: TASK_TOKEN_TYPE,
      issuer: options.issuer,
      currentDate: options.now,
      clockTolerance: options.clockToleranceSeconds ?? 0,
      requiredClaims: REQUIRED_CLAIMS,
    }));
  } catch (err) {
    return joseFailure(err);
  }
  const problem = claimsProblem(payload);
  if (problem) return { ok: false, reason: 'malformed', detail: problem, claims: partialClaims(payload) };
  return { ok: true, claims: payload as unknown as TaskTokenClaims, kid };
}

/**
 * Checks what can be checked before the signature, so junk never reaches a key lookup:
 * compact form, `typ`, `kid`, and an algorithm we issue (never `none`, never HMAC).
 * Returns the problem as a string.
 */
function readHeader(token: unknown): { kid: string; alg: TokenAlg } | string {
  if (typeof token !== 'string' || token.length === 0) return 'not a compact JWS: empty';
  if (token.length > MAX_TOKEN_LENGTH) return `not a task token: longer than ${MAX_TOKEN_LENGTH} characters`;
  const parts = token.split('.');
  if (parts.length !== 3) return `not a compact JWS: ${parts.length} parts instead of 3`;
  const [encodedHeader, encodedPayload, signature] = parts as [string, string, string];
  if (!BASE64URL.test(encodedHeader) || !BASE64URL.test(encodedPayload)) return 'not a compact JWS: header or payload is not base64url';
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(encodedHeader, 'base64url').toString('utf8'));
  } catch {
    return 'not a compact JWS: header is not JSON';
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return 'not a compact JWS: header is not a JSON object';
  const { typ, kid, alg } = header as Record<string, unknown>;
  if (typeof typ !== 'string' || normalizeTyp(typ) !== TASK_TOKEN_TYPE) return `header typ is ${describe(typ)}, expected ${TASK_TOKEN_TYPE}`;
  if (!isTokenAlg(alg)) return `header alg ${describe(alg)} is not accepted (ES256, EdDSA)`;
  if (typeof kid !== 'string' || kid.length === 0) return 'header has no kid';
  if (signature.length === 0 || !BASE64URL.test(signature)) return 'not a compact JWS: signature is missing or not base64url';
  return { kid, alg };
}

/** Media type comparison per RFC 7515 4.1.9: case-insensitive, `application/` optional. */
function normalizeTyp(typ: string): string {
  const lower = typ.toLowerCase();
  return lower.startsWith('application/') ? lower.slice('application/'.length) : lower;
}

function joseFailure(err: unknown): SignatureCheck {
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return { ok: false, reason: 'bad-signature', detail: 'signature verification failed' };
  }
  if (err instanceof errors.JOSEAlgNotAllowed) {
    return { ok: false, reason: 'bad-signature', detail: `algorithm not allowed for this key: ${err.message}` };
  }
  // Claim errors are raised only after the signature verified, so their payload is authentic.
  if (err instanceof errors.JWTExpired) {
    return { ok: false, reason: 'expired', detail: timeDetail(err.claim, err.payload), claims: partialClaims(err.payload) };
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf' && err.reason === 'check_failed') {
      return { ok: false, reason: 'expired', detail: timeDetail('nbf', err.payload), claims: partialClaims(err.payload) };
    }
    return { ok: false, reason: 'malformed', detail: err.message, claims: partialClaims(err.payload) };
  }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid || err instanceof errors.JOSENotSupported) {
    return { ok: false, reason: 'malformed', detail: err.message };
  }
  // Anything else (a key object jose cannot use, a bug) is ours, not the token's.
  throw err;
}

function timeDetail(claim: string, payload: JWTPayload): string {
  if (claim === 'nbf') return `not yet valid: nbf is ${isoOf(payload.nbf)}`;
  return `expired at ${isoOf(payload.exp)}`;
}

function isoOf(seconds: unknown): string {
  return typeof seconds === 'number' && Number.isFinite(seconds) ? new Date(seconds * 1000).toISOString() : String(seconds);
}

/** The first problem with the claims' presence and types, or undefined. */
function claimsProblem(claims: Record<string, unknown>): string | undefined {
  for (const name of STRING_CLAIMS) {
    const value = claims[name];
    if (value === undefined) return `missing claim ${name}`;
    if (typeof value !== 'string' || value.length === 0) return `claim ${name} must be a non-empty string`;
  }
  for (const name of DATE_CLAIMS) {
    const value = claims[name];
    if (value === undefined) return `missing claim ${name}`;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) return `claim ${name} must be a NumericDate in whole seconds`;
  }
  const cnf = claims.cnf;
  if (cnf === undefined) return 'missing claim cnf';
  if (typeof cnf !== 'object' || cnf === null || Array.isArray(cnf)) return 'claim cnf must be an object';
  const thumbprint = (cnf as Record<string, unknown>)['x5t#S256'];
  if (typeof thumbprint !== 'string' || thumbprint.length === 0) return 'claim cnf must carry a non-empty x5t#S256';
  return undefined;
}

/** The claims that have the right type, for audit records of tokens that failed a check. */
function partialClaims(payload: JWTPayload): Partial<TaskTokenClaims> {
  const out: Partial<TaskTokenClaims> = {};
  for (const name of STRING_CLAIMS) {
    const value = payload[name];
    if (typeof value === 'string') out[name] = value;
  }
  for (const name of DATE_CLAIMS) {
    const value = payload[name];
    if (typeof value === 'number') out[name] = value;
  }
  const cnf = payload.cnf;
  if (typeof cnf === 'object' && cnf !== null && !Array.isArray(cnf)) {
    const thumbprint = (cnf as Record<string, unknown>)['x5t#S256'];
    if (typeof thumbprint === 'string') out.cnf = { 'x5t#S256': thumbprint };
  }
  return out;
}

function describe(value: unknown): string {
  return typeof value === 'string' ? quote(value) : value === undefined ? 'missing' : typeof value;
}

/** Attacker-supplied text in a detail: quoted and bounded. */
function quote(text: string): string {
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
}
