/**
 * Subject tokens: a JWT from one of the policy's `subject_issuers` (an OIDC ID token, say)
 * naming the principal a task acts for. This module verifies one and says who it names, or
 * why not, as a kind the API maps to a gRPC status:
 *
 *   - `invalid-argument`: the token is malformed, expired, not yet valid, too old for the
 *     issuer's max_age, or lacks a claim the issuer requires (the caller can get a fresh one);
 *   - `permission-denied`: the token is not one the broker may trust: an unknown issuer, a
 *     refused algorithm, a bad signature, an audience not accepted, or keys that cannot be had
 *     (fail closed: an IdP whose JWKS cannot be fetched names no principal).
 *
 * Nothing here throws for a bad token or an unreachable IdP; every failure is a value.
 *
 * The unverified payload is read once, for its `iss` alone: to pick the issuer configuration
 * (keys, audiences, algorithms) the token is then verified against. Nothing else of it is used
 * before the signature has been checked.
 */
import { createRemoteJWKSet, customFetch, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { quoted } from '../errors.js';
import type { Principal, SubjectIssuer } from './policy.js';
import { JwksFileError, readJwksFile, type KeySet } from './jwks-source.js';

export type SubjectTokenFailure = { ok: false; kind: 'invalid-argument' | 'permission-denied'; reason: string };
export type VerifiedSubject = { ok: true; principal: Principal; claims: Record<string, unknown>; issuer: SubjectIssuer };

export interface SubjectTokenVerifierOptions {
  /** Bound on one JWKS fetch for a `jwks_url` issuer (default 5000 ms). */
  fetchTimeoutMs?: number;
  now?: () => Date;
  /** Leeway for exp, nbf and iat against this machine's clock (default 30 s). */
  clockToleranceSeconds?: number;
}

/** A subject token is a header-sized credential: anything longer is refused before any parsing. */
export const MAX_SUBJECT_TOKEN_CHARS = 16 * 1024;
/** Far above any IdP's JWKS (a few keys); bounds what a wrong or hostile URL can make us hold. */
const MAX_JWKS_BYTES = 1 << 20;
/** After a successful fetch, an unknown kid refetches at most this often (jose's cooldownDuration). */
const JWKS_COOLDOWN_MS = 30_000;
/** Keys fetched are used for at most this long before the next token fetches them again. */
const JWKS_MAX_AGE_MS = 600_000;

/** Keys that could not be had: told apart from a key that does not fit, which is a bad token. */
class KeysUnavailable extends Error {
  override readonly name = 'KeysUnavailable';
}

export class SubjectTokenVerifier {
  readonly #fetchTimeoutMs: number;
  readonly #now: () => Date;
  readonly #clockTolerance: number;
  /**
   * Keyed by the SubjectIssuer object: a new policy version parses new objects, so its files are
   * read afresh and the old entries go with the old policy. Pending reads are shared.
   */
  #files = new WeakMap<SubjectIssuer, Promise<KeySet>>();
  #remote = new WeakMap<SubjectIssuer, JWTVerifyGetKey>();
  #closed = false;

  constructor(options: SubjectTokenVerifierOptions = {}) {
    this.#fetchTimeoutMs = options.fetchTimeoutMs ?? 5_000;
    this.#now = options.now ?? (() => new Date());
    this.#clockTolerance = options.clockToleranceSeconds ?? 30;
  }

  /** Verifies `token` against the issuer among `issuers` that its `iss` names. Never throws. */
  async verify(token: string, issuers: readonly SubjectIssuer[]): Promise<VerifiedSubject | SubjectTokenFailure> {
    if (this.#closed) return denied('the subject token verifier is closed');
    if (typeof token !== 'string' || token.length === 0) return invalid('the subject token is empty');
    if (token.length > MAX_SUBJECT_TOKEN_CHARS) {
      return invalid(`the subject token is ${token.length} characters, more than ${MAX_SUBJECT_TOKEN_CHARS}`);
    }

    let alg: unknown;
    let iss: unknown;
    try {
      alg = decodeProtectedHeader(token).alg;
      iss = decodeJwt(token).iss;
    } catch (err) {
      return invalid(`the subject token is not a JWT: ${(err as Error).message}`);
    }
    if (typeof iss !== 'string') return invalid('the subject token has no "iss" (issuer) claim');
    const issuer = issuers.find((i) => i.issuer === iss);
    if (!issuer) return denied(`issuer ${quoted(iss, 128)} is not one of the policy's subject_issuers`);
    // Checked here, not only by jwtVerify, so the reason names the algorithm and the issuer.
    if (typeof alg !== 'string') return invalid('the subject token has no "alg" in its header');
    if (alg.toLowerCase() === 'none') return denied('alg "none" is refused: an unsigned token proves nothing');
    if (!issuer.algorithms.includes(alg)) {
      return denied(`alg ${quoted(alg, 32)} is not allowed for issuer ${quoted(issuer.issuer, 128)} (allowed: ${issuer.algorithms.join(', ')})`);
    }

    let keys: JWTVerifyGetKey;
    try {
      keys = await this.#keysOf(issuer);
    } catch (err) {
      return denied(err instanceof JwksFileError ? err.message : `the keys of issuer ${quoted(issuer.issuer, 128)} are unusable: ${(err as Error).message}`);
    }

    const now = this.#now();
    let payload: JWTPayload;
    try {
      payload = await this.#jwtVerify(token, keys, issuer, now);
    } catch (err) {
      return failureOf(err, issuer, now);
    }

    const { sub, sid } = payload;
    if (typeof sub !== 'string' || sub === '') return invalid('the subject token\'s "sub" claim is not a non-empty string');
    const principal: Principal = { iss: issuer.issuer, sub, ...(typeof sid === 'string' ? { sid } : {}) };
    return { ok: true, principal, claims: payload, issuer };
  }

  /** Stops verifying (every later verify is denied); cached keys are dropped. */
  close(): void {
    this.#closed = true;
    this.#files = new WeakMap();
    this.#remote = new WeakMap();
  }

  async #jwtVerify(token: string, keys: JWTVerifyGetKey, issuer: SubjectIssuer, now: Date): Promise<JWTPayload> {
    const options = {
      algorithms: issuer.algorithms,
      issuer: issuer.issuer,
      audience: issuer.audiences,
      // exp too: a subject token that never expires would name its principal forever.
      requiredClaims: ['sub', 'exp', ...issuer.requiredClaims],
      clockTolerance: this.#clockTolerance,
      currentDate: now,
      ...(issuer.maxAgeSeconds !== undefined ? { maxTokenAge: issuer.maxAgeSeconds } : {}),
    };
    try {
      return (await jwtVerify(token, keys, options)).payload;
    } catch (err) {
      // Several keys fit the header (no kid, say): the token is good if one of them verifies it.
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
      let last: unknown = new errors.JWSSignatureVerificationFailed();
      for await (const key of err) {
        try {
          return (await jwtVerify(token, key, options)).payload;
        } catch (inner) {
          last = inner;
          if (!(inner instanceof errors.JWSSignatureVerificationFailed)) break;
        }
      }
      throw last;
    }
  }

  /** The key lookup for `issuer`: its JWKS file (read once per policy version) or URL. */
  async #keysOf(issuer: SubjectIssuer): Promise<JWTVerifyGetKey> {
    if (issuer.jwksFile !== undefined) {
      let pending = this.#files.get(issuer);
      if (!pending) {
        pending = readJwksFile(issuer.jwksFile);
        this.#files.set(issuer, pending);
        // A failed read is not kept: once the file is fixed the next token reads it, without
        // waiting for a policy reload.
        pending.catch(() => {
          if (this.#files.get(issuer) === pending) this.#files.delete(issuer);
        });
      }
      return await pending;
    }
    if (issuer.jwksUrl !== undefined) return this.#remoteOf(issuer, issuer.jwksUrl);
    throw new Error('the issuer has neither jwks_file nor jwks_url');
  }

  #remoteOf(issuer: SubjectIssuer, url: URL): JWTVerifyGetKey {
    const known = this.#remote.get(issuer);
    if (known) return known;
    const remote = createRemoteJWKSet(url, {
      timeoutDuration: this.#fetchTimeoutMs,
      cooldownDuration: JWKS_COOLDOWN_MS,
      cacheMaxAge: JWKS_MAX_AGE_MS,
      [customFetch]: boundedFetch,
    });
    // A fetch that fails (refused, timed out, not 200, not JSON, not a JWKS) is the IdP being
    // unreachable, not the token being bad: tagged, so failureOf says so instead of blaming the
    // signature. A key that does not fit stays jose's own error.
    const keys: JWTVerifyGetKey = async (header, token) => {
      try {
        return await remote(header, token);
      } catch (err) {
        if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys || err instanceof errors.JOSENotSupported) throw err;
        throw new KeysUnavailable(`could not fetch the JWKS of ${url.href}: ${describeFetchError(err)}`);
      }
    };
    this.#remote.set(issuer, keys);
    return keys;
  }
}

/** What a jose (or fetch) error during verification means for the caller. */
function failureOf(err: unknown, issuer: SubjectIssuer, now: Date): SubjectTokenFailure {
  const from = `issuer ${quoted(issuer.issuer, 128)}`;
  if (err instanceof KeysUnavailable) return denied(err.message);
  if (err instanceof errors.JWTExpired) {
    if (err.claim === 'iat')
      return invalid(`the subject token was issued ${ageOf(err.payload, now)} ago, more than max_age ${issuer.maxAgeSeconds ?? 0}s of ${from}`);
    return invalid(`the subject token expired at ${timeOf(err.payload.exp)}`);
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    const claim = JSON.stringify(err.claim);
    if (err.reason === 'missing') return invalid(`the subject token has no ${claim} claim (required by ${from})`);
    switch (err.claim) {
      case 'aud':
        return denied(`the subject token's audience is not accepted by ${from} (accepted: ${issuer.audiences.join(', ')})`);
      case 'iss':
        return denied(`the subject token's issuer is not ${from}`);
      case 'nbf':
        return invalid(`the subject token is not valid before ${timeOf(err.payload.nbf)}`);
      case 'iat':
        return invalid(`the subject token's "iat" is ${err.reason === 'invalid' ? 'not a number' : 'in the future'}`);
      default:
        return invalid(`the subject token's ${claim} claim is invalid: ${err.message}`);
    }
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return denied('signature verification failed');
  if (err instanceof errors.JWKSNoMatchingKey) return denied(`signature verification failed: no key of ${from} fits the token's header (kid, alg)`);
  if (err instanceof errors.JOSEAlgNotAllowed) return denied(`the subject token's alg is not allowed for ${from}`);
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return invalid(`the subject token is not a valid JWT: ${err.message}`);
  if (err instanceof errors.JOSENotSupported) return denied(`signature verification failed: ${err.message}`);
  // Anything else (a key of the wrong type, an unexpected error): fail closed, and say what it was.
  return denied(`the subject token could not be verified: ${(err as Error).message}`);
}

function invalid(reason: string): SubjectTokenFailure {
  return { ok: false, kind: 'invalid-argument', reason };
}

function denied(reason: string): SubjectTokenFailure {
  return { ok: false, kind: 'permission-denied', reason };
}

function timeOf(seconds: unknown): string {
  return typeof seconds === 'number' && Number.isFinite(seconds) ? new Date(seconds * 1000).toISOString() : String(seconds);
}

function ageOf(payload: JWTPayload, now: Date): string {
  const iat = payload.iat;
  return typeof iat === 'number' ? `${Math.max(0, Math.round(now.getTime() / 1000 - iat))}s` : 'too long';
}

/** fetch's own message is "fetch failed"; the reason (ECONNREFUSED, a timeout) is in its cause. */
function describeFetchError(err: unknown): string {
  if (err instanceof errors.JWKSTimeout) return 'timed out';
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause instanceof Error ? err.cause.message : undefined;
  return cause && cause !== err.message ? `${err.message} (${cause})` : err.message;
}

/**
 * fetch for jose's remote JWKS: the body is read up to MAX_JWKS_BYTES (declared or streamed) and
 * refused beyond, instead of held whole.
 */
async function boundedFetch(url: string, init: RequestInit): Promise<Response> {
  const response = await fetch(url, init);
  if (response.status !== 200) return response;
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (declared > MAX_JWKS_BYTES) {
    await response.body?.cancel();
    throw new Error(`the JWKS is ${declared} bytes, more than ${MAX_JWKS_BYTES}`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  // Breaking out of the loop cancels the stream: the rest is not read.
  for await (const chunk of (response.body ?? []) as AsyncIterable<Uint8Array>) {
    size += chunk.byteLength;
    if (size > MAX_JWKS_BYTES) throw new Error(`the JWKS is more than ${MAX_JWKS_BYTES} bytes`);
    chunks.push(chunk);
  }
  return new Response(Buffer.concat(chunks), { status: response.status, headers: response.headers });
}
