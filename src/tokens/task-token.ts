/**
 * The task token: a compact JWS with `typ: task+jwt` and a `kid`, whose claims bind it to one
 * task, one audience, one caller and the caller's certificate (RFC 8705 `cnf`).
 *
 * checkTaskToken answers "is this an authentic, well-formed, currently valid token from us?".
 * Revocation, audience and binding checks need the database and belong to the caller.
 *
 * checkTaskTokenWithKey is the same check, synchronous, for a caller that looks the key up
 * itself (readTaskTokenHeader gives the kid): the verifier SDK's hot path.
 *
 * Signing and verification run on node:crypto directly: jose (which we used before) signed at
 * a fraction of node:crypto's rate. checkTaskToken makes the checks jose's jwtVerify made, in
 * the same order and with the same outcomes, except that it refuses every `crit` header (jose
 * let `crit: ["b64"]` with `b64: true` through). jose remains an independent verifier of what
 * we sign (see the tests) and serves the JWKS side. The node:crypto calls themselves, and the
 * check that a key fits its algorithm, are in token-crypto.ts.
 */
import { isUtf8 } from 'node:buffer';
import type { SigningKey, VerificationKey, VerificationKeySource } from './keyring.js';
import { isTokenAlg, type TokenAlg } from './token-alg.js';
import { nodeKey, signatureOf, signatureValid } from './token-crypto.js';

export { certificateThumbprint as x5tS256 } from '../spiffe/certificate.js';

/** RFC 8693 4.1: the acting party (here a delegator's SPIFFE ID), with the one before it nested. */
export interface ActorClaim {
  sub: string;
  act?: ActorClaim;
}

/** The subject behind the task (token contract v2). */
export interface PrincipalClaim {
  iss: string;
  sub: string;
  sid?: string;
}

/** The token contract version this code writes; tokens without `ver` are version 1. */
export const TOKEN_CONTRACT_VERSION = 2;
/** Bounds of what a version 2 token may carry. */
export const MAX_USES_LIMIT = 1000;
const MAX_ACTOR_DEPTH = 16;

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
  /** Token contract version (2); absent in version 1 tokens, which have none of the claims below. */
  ver?: number;
  /** A delegated task's delegators, most recent outermost (RFC 8693 act). */
  act?: ActorClaim;
  /** A delegated task's parent. */
  parent_task_id?: string;
  /** The subject behind the task, when it is bound to one. */
  principal?: PrincipalClaim;
  /** A use-limited token: VerifyToken accepts it at most this many times; offline verifiers must verify it online. */
  max_uses?: number;
}

/** The delegators of an act claim, most recent first. */
export function actorsOf(act: ActorClaim | undefined): string[] {
  const out: string[] = [];
  for (let a = act; a; a = a.act) out.push(a.sub);
  return out;
}

/** The act claim naming `delegators` (most recent first), or undefined for none. */
export function actClaimOf(delegators: readonly string[]): ActorClaim | undefined {
  let act: ActorClaim | undefined;
  for (let i = delegators.length - 1; i >= 0; i--) act = act ? { sub: delegators[i]!, act } : { sub: delegators[i]! };
  return act;
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
export const MAX_TOKEN_LENGTH = 16 * 1024;
const STRING_CLAIMS = ['iss', 'sub', 'aud', 'jti', 'task_id', 'task_hash', 'scope'] as const;
const DATE_CLAIMS = ['iat', 'nbf', 'exp'] as const;
/** Every claim a token must carry, in the order their absence is reported (jose's order, kept so details do not change). */
const PRESENCE_ORDER = ['iss', 'cnf', 'exp', 'nbf', 'iat', 'scope', 'task_hash', 'task_id', 'jti', 'aud', 'sub'] as const;
const BASE64URL = /^[A-Za-z0-9_-]+$/;
const BAD_SIGNATURE = { ok: false, reason: 'bad-signature', detail: 'signature verification failed' } as const;
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Signs with node:crypto. The work is synchronous; the promise keeps the contract callers
 * rely on (a refusal is a rejection, and `await` on the result stays meaningful).
 */
export function signTaskToken(key: SigningKey, claims: TaskTokenClaims): Promise<string> {
  // An exception thrown in the executor rejects the promise.
  return new Promise((resolve) => resolve(signCompact(key, claims)));
}

function signCompact(key: SigningKey, claims: TaskTokenClaims): string {
  const problem = claimsProblem(claims as unknown as Record<string, unknown>);
  if (problem) throw new Error(`refusing to sign task token: ${problem}`);
  const privateKey = nodeKey(key.privateKey, key.alg, 'private');
  const signingInput = `${encodedHeader(key.alg, key.kid)}.${Buffer.from(JSON.stringify(claims), 'utf8').toString('base64url')}`;
  const data = Buffer.from(signingInput, 'latin1');
  const signature = signatureOf(key.alg, privateKey, data);
  return `${signingInput}.${signature.toString('base64url')}`;
}

/** Verifies signature, header, claim shapes, issuer and time. Never throws for a bad token. */
export async function checkTaskToken(token: string, keys: VerificationKeySource, options: CheckTaskTokenOptions): Promise<SignatureCheck> {
  timeOptions(options);
  const header = readTaskTokenHeader(token);
  if (typeof header === 'string') return { ok: false, reason: 'malformed', detail: header };
  return checkTaskTokenWithKey(token, header, await keys.verificationKey(header.kid), options);
}

/**
 * checkTaskToken after the key lookup: `header` is readTaskTokenHeader(token), `key` the
 * verification key of its kid (undefined: unknown). Synchronous; never throws for a bad token.
 */
export function checkTaskTokenWithKey(
  token: string,
  header: TaskTokenHeader,
  key: VerificationKey | undefined,
  options: CheckTaskTokenOptions,
): SignatureCheck {
  const { now, tolerance } = timeOptions(options);
  const { kid, alg, parts } = header;
  if (!key) return { ok: false, reason: 'bad-signature', detail: `unknown signing key ${quote(kid)}` };
  if (key.alg !== alg) return { ok: false, reason: 'bad-signature', detail: `header alg ${alg} does not match signing key ${quote(kid)} (${key.alg})` };
  // Reported only now, as before: an unknown kid or a wrong alg is bad-signature whatever else is wrong.
  if (header.problem) return { ok: false, reason: 'malformed', detail: header.problem };

  // A key that does not fit its algorithm is our bug, not the token's: this throws.
  const publicKey = nodeKey(key.publicKey, alg, 'public');
  const [encodedHeader, encodedPayload, encodedSignature] = parts;
  const signature = Buffer.from(encodedSignature, 'base64url');
  const data = Buffer.from(token.slice(0, encodedHeader.length + 1 + encodedPayload.length), 'latin1');
  if (!signatureValid(alg, publicKey, data, signature)) return BAD_SIGNATURE;

  // Authentic from here on: claims of a token that fails below are reported as partial claims.
  const payload = readPayload(encodedPayload);
  if (typeof payload === 'string') return { ok: false, reason: 'malformed', detail: payload };
  const malformed = (detail: string): SignatureCheck => ({ ok: false, reason: 'malformed', detail, claims: partialClaims(payload) });
  for (const name of PRESENCE_ORDER) {
    if (!Object.hasOwn(payload, name)) return malformed(`missing required "${name}" claim`);
  }
  if (payload.iss !== options.issuer) return malformed('unexpected "iss" claim value');
  const { iat, nbf, exp } = payload;
  if (typeof iat !== 'number') return malformed('"iat" claim must be a number');
  if (typeof nbf !== 'number') return malformed('"nbf" claim must be a number');
  if (nbf > now + tolerance) return { ok: false, reason: 'expired', detail: `not yet valid: nbf is ${isoOf(nbf)}`, claims: partialClaims(payload) };
  if (typeof exp !== 'number') return malformed('"exp" claim must be a number');
  if (exp <= now - tolerance) return { ok: false, reason: 'expired', detail: `expired at ${isoOf(exp)}`, claims: partialClaims(payload) };
  const problem = claimsProblem(payload);
  if (problem) return malformed(problem);
  return { ok: true, claims: payload as unknown as TaskTokenClaims, kid };
}

/** The check's clock in whole seconds and its tolerance; a caller passing nonsense gets an exception. */
function timeOptions(options: CheckTaskTokenOptions): { now: number; tolerance: number } {
  const now = Math.floor(options.now.getTime() / 1000);
  if (!Number.isFinite(now)) throw new TypeError('checkTaskToken: options.now is not a valid date');
  const tolerance = options.clockToleranceSeconds ?? 0;
  if (typeof tolerance !== 'number' || !Number.isFinite(tolerance) || tolerance < 0) {
    throw new TypeError(`checkTaskToken: clockToleranceSeconds must be a non-negative number, got ${String(tolerance)}`);
  }
  return { now, tolerance };
}

export interface TaskTokenHeader {
  kid: string;
  alg: TokenAlg;
  parts: [string, string, string];
  /** A problem to report after the key lookup (where jose reported it), so the outcomes stay as they were. */
  problem?: string;
}

/**
 * Checks what can be checked before the signature, so junk never reaches a key lookup:
 * compact form, `typ`, `kid`, and an algorithm we issue (never `none`, never HMAC).
 * Returns the problem as a string.
 */
export function readTaskTokenHeader(token: unknown): TaskTokenHeader | string {
  if (typeof token !== 'string' || token.length === 0) return 'not a compact JWS: empty';
  if (token.length > MAX_TOKEN_LENGTH) return `not a task token: longer than ${MAX_TOKEN_LENGTH} characters`;
  const parts = token.split('.');
  if (parts.length !== 3) return `not a compact JWS: ${parts.length} parts instead of 3`;
  const [encodedHeader, encodedPayload, signature] = parts as [string, string, string];
  if (!BASE64URL.test(encodedHeader) || !BASE64URL.test(encodedPayload)) return 'not a compact JWS: header or payload is not base64url';
  const header = parsedHeader(encodedHeader);
  if (typeof header === 'string') return header;
  if (signature.length === 0 || !BASE64URL.test(signature)) return 'not a compact JWS: signature is missing or not base64url';
  const result: TaskTokenHeader = { kid: header.kid, alg: header.alg, parts: [encodedHeader, encodedPayload, signature] };
  if (header.problem) result.problem = header.problem;
  else if (!isExactBase64url(signature)) result.problem = 'not a compact JWS: signature is not base64url';
  return result;
}

type ParsedHeader = Pick<TaskTokenHeader, 'kid' | 'alg' | 'problem'>;

/** Parsed protected headers by their encoding: the same few keys sign every token, so a verifier decodes each header once. */
const parsedHeaders = new Map<string, ParsedHeader>();
const MAX_PARSED_HEADERS = 64;

/** The header's typ, alg and kid checked, and a problem to report after the key lookup; or the problem that ends the check at once. */
function parsedHeader(encodedHeader: string): ParsedHeader | string {
  const cached = parsedHeaders.get(encodedHeader);
  if (cached) return cached;
  const headerBytes = Buffer.from(encodedHeader, 'base64url');
  let header: unknown;
  try {
    header = JSON.parse(headerBytes.toString('utf8'));
  } catch {
    return 'not a compact JWS: header is not JSON';
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return 'not a compact JWS: header is not a JSON object';
  const { typ, kid, alg } = header as Record<string, unknown>;
  if (typeof typ !== 'string' || normalizeTyp(typ) !== TASK_TOKEN_TYPE) return `header typ is ${describe(typ)}, expected ${TASK_TOKEN_TYPE}`;
  if (!isTokenAlg(alg)) return `header alg ${describe(alg)} is not accepted (ES256, EdDSA)`;
  if (typeof kid !== 'string' || kid.length === 0) return 'header has no kid';
  const parsed: ParsedHeader = { kid, alg };
  // Buffer decodes leniently; the header must be exact base64url (no dangling character) of UTF-8.
  if (!isExactBase64url(encodedHeader) || !isUtf8(headerBytes)) parsed.problem = 'not a compact JWS: header is not base64url-encoded UTF-8';
  // RFC 7515 4.1.11: we understand no extension, so a token that names one as critical is refused.
  else if (Object.hasOwn(header, 'crit')) parsed.problem = 'header has crit: no JWS extension is understood here (RFC 7515 4.1.11)';
  if (parsedHeaders.size >= MAX_PARSED_HEADERS) parsedHeaders.clear();
  parsedHeaders.set(encodedHeader, parsed);
  return parsed;
}

/** The claims set of an authentic token: a JSON object, in UTF-8, base64url-encoded. */
function readPayload(encodedPayload: string): Record<string, unknown> | string {
  if (!isExactBase64url(encodedPayload)) return 'not a compact JWS: payload is not base64url';
  let payload: unknown;
  try {
    payload = JSON.parse(strictUtf8.decode(Buffer.from(encodedPayload, 'base64url')));
  } catch {
    return 'payload is not a JSON object';
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return 'payload is not a JSON object';
  return payload as Record<string, unknown>;
}

/** Base64url (already matched by BASE64URL) with no leftover character: 4n+1 characters encode no whole byte. */
function isExactBase64url(text: string): boolean {
  return text.length % 4 !== 1;
}

/** Media type comparison per RFC 7515 4.1.9: case-insensitive, `application/` optional. */
function normalizeTyp(typ: string): string {
  const lower = typ.toLowerCase();
  return lower.startsWith('application/') ? lower.slice('application/'.length) : lower;
}

/** Encoded protected headers by alg and kid: the same few keys sign every token. */
const encodedHeaders = new Map<string, string>();
const MAX_ENCODED_HEADERS = 64;

/** base64url of `{"alg":…,"kid":…,"typ":"task+jwt"}`, members in that order (as jose wrote them). */
function encodedHeader(alg: TokenAlg, kid: string): string {
  const cacheKey = `${alg} ${kid}`;
  let encoded = encodedHeaders.get(cacheKey);
  if (encoded === undefined) {
    if (encodedHeaders.size >= MAX_ENCODED_HEADERS) encodedHeaders.clear();
    encoded = Buffer.from(JSON.stringify({ alg, kid, typ: TASK_TOKEN_TYPE }), 'utf8').toString('base64url');
    encodedHeaders.set(cacheKey, encoded);
  }
  return encoded;
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
  return version2Problem(claims);
}

/** The first problem with the claims of token contract version 2, or undefined. */
function version2Problem(claims: Record<string, unknown>): string | undefined {
  const { ver, act, parent_task_id: parent, principal, max_uses: maxUses } = claims;
  if (ver !== undefined) {
    if (typeof ver !== 'number' || !Number.isSafeInteger(ver) || ver < 1) return 'claim ver must be a positive whole number';
    // A newer contract may carry claims that limit the token; not understanding them, refuse it.
    if (ver > TOKEN_CONTRACT_VERSION) return `token contract version ${ver} is newer than this verifier understands (${TOKEN_CONTRACT_VERSION})`;
  }
  if (act !== undefined) {
    let a: unknown = act;
    for (let depth = 0; a !== undefined; depth++) {
      if (depth >= MAX_ACTOR_DEPTH) return `claim act nests deeper than ${MAX_ACTOR_DEPTH}`;
      if (typeof a !== 'object' || a === null || Array.isArray(a)) return 'claim act must be an object';
      const { sub } = a as Record<string, unknown>;
      if (typeof sub !== 'string' || sub.length === 0) return 'claim act must carry a non-empty sub';
      a = (a as Record<string, unknown>).act;
    }
  }
  if (parent !== undefined && (typeof parent !== 'string' || parent.length === 0)) return 'claim parent_task_id must be a non-empty string';
  if (principal !== undefined) {
    if (typeof principal !== 'object' || principal === null || Array.isArray(principal)) return 'claim principal must be an object';
    const { iss, sub, sid } = principal as Record<string, unknown>;
    if (typeof iss !== 'string' || iss.length === 0 || typeof sub !== 'string' || sub.length === 0) return 'claim principal must carry a non-empty iss and sub';
    if (sid !== undefined && (typeof sid !== 'string' || sid.length === 0)) return 'claim principal.sid must be a non-empty string';
  }
  if (maxUses !== undefined && (typeof maxUses !== 'number' || !Number.isSafeInteger(maxUses) || maxUses < 1 || maxUses > MAX_USES_LIMIT)) {
    return `claim max_uses must be a whole number from 1 to ${MAX_USES_LIMIT}`;
  }
  return undefined;
}

/** The claims that have the right type, for audit records of tokens that failed a check. */
function partialClaims(payload: Record<string, unknown>): Partial<TaskTokenClaims> {
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
