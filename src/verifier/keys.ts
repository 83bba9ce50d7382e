/**
 * The broker's token verification keys, held in memory for a synchronous lookup by kid. Loaded
 * from GetSigningKeys (over the mTLS channel) or a JWKS URL; refreshed in the background once
 * older than `maxAgeMs` (so a key the broker pre-publishes arrives before its first token), and
 * when a token names a kid we do not know, at most once per `minRefreshIntervalMs` (an unknown kid sooner is refused
 * without a fetch, so junk kids cannot make us hammer the broker), concurrent refreshes sharing
 * one fetch.
 */
import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type { VerificationKey } from '../tokens/keyring.js';
import { isTokenAlg, type TokenAlg } from '../tokens/token-alg.js';
import { nodeKey } from '../tokens/token-crypto.js';
import type { VerifierBroker, VerifierClock, VerifierLogger } from './types.js';

export interface KeySetOptions {
  broker: VerifierBroker;
  jwks: 'broker' | URL;
  /** Overrides the issuer GetSigningKeys reports; required with a URL. */
  issuer: string | undefined;
  minRefreshIntervalMs: number;
  /** Keys fetched longer ago than this are fetched again at the next verification (refreshIfOld). */
  maxAgeMs: number;
  clock: VerifierClock;
  logger: VerifierLogger;
}

interface LoadedKeys {
  keys: Map<string, VerificationKey>;
  issuer: string | undefined;
}

export class SigningKeySet {
  readonly #options: KeySetOptions;
  #keys = new Map<string, VerificationKey>();
  #issuer: string | undefined;
  #lastFetchAt = Number.NEGATIVE_INFINITY;
  /** When the fetch behind the keys we hold started. */
  #loadedAt = Number.NEGATIVE_INFINITY;
  #inFlight: Promise<void> | undefined;
  #refreshes = 0;

  constructor(options: KeySetOptions) {
    if (options.jwks !== 'broker' && !options.issuer) throw new TypeError('createTaskTokenVerifier: with a JWKS URL, options.issuer is required');
    this.#options = options;
    this.#issuer = options.issuer;
  }

  /** The key of `kid`, or undefined. */
  key(kid: string): VerificationKey | undefined {
    return this.#keys.get(kid);
  }

  /** The iss the tokens must carry; undefined before the first load. */
  get issuer(): string | undefined {
    return this.#issuer;
  }

  get refreshes(): number {
    return this.#refreshes;
  }

  /** Whether a fetch may start now (the last one started at least minRefreshIntervalMs ago), or one is under way. */
  mayRefresh(): boolean {
    return this.#inFlight !== undefined || this.#options.clock.now() - this.#lastFetchAt >= this.#options.minRefreshIntervalMs;
  }

  /**
   * Starts a fetch in the background when the keys are older than maxAgeMs (and a fetch may
   * start); never waits. A failed fetch is logged, and tried again at the refresh rate.
   */
  refreshIfOld(): void {
    if (this.#inFlight || this.#options.clock.now() - this.#loadedAt < this.#options.maxAgeMs || !this.mayRefresh()) return;
    this.refresh().catch((error: Error) => this.#options.logger('warn', 'verifier: key refresh failed', { error: error.message }));
  }

  /** Fetches the keys unless a fetch is under way (then shares it); `force` ignores the rate limit (the first load). Rejects when the fetch fails. */
  refresh(force = false): Promise<void> {
    if (this.#inFlight) return this.#inFlight;
    if (!force && !this.mayRefresh()) return Promise.resolve();
    const startedAt = this.#options.clock.now();
    this.#lastFetchAt = startedAt;
    this.#refreshes += 1;
    this.#inFlight = this.#fetch()
      .then(({ keys, issuer }) => {
        this.#keys = keys;
        this.#loadedAt = startedAt;
        this.#issuer = this.#options.issuer ?? issuer;
      })
      .finally(() => {
        this.#inFlight = undefined;
      });
    return this.#inFlight;
  }

  async #fetch(): Promise<LoadedKeys> {
    const { jwks, broker } = this.#options;
    if (jwks === 'broker') {
      const response = await broker.getSigningKeys();
      return {
        keys: this.#parse(JSON.parse(response.jwksJson) as unknown, isTokenAlg(response.alg) ? response.alg : undefined),
        issuer: response.issuer || undefined,
      };
    }
    // A redirect is not followed: the keys come from the address configured, or not at all.
    const response = await fetch(jwks, { signal: AbortSignal.timeout(10_000), headers: { accept: 'application/json' }, redirect: 'error' });
    if (!response.ok) throw new Error(`JWKS ${jwks.href} answered HTTP ${response.status}`);
    return { keys: this.#parse(JSON.parse(await boundedText(response, MAX_JWKS_BYTES, jwks.href)), undefined), issuer: undefined };
  }

  /** The usable keys of a JWKS document; a key we cannot use is skipped and logged. */
  #parse(document: unknown, brokerAlg: TokenAlg | undefined): Map<string, VerificationKey> {
    const list = (document as { keys?: unknown } | null)?.keys;
    if (!Array.isArray(list)) throw new Error('JWKS document has no "keys" array');
    const keys = new Map<string, VerificationKey>();
    for (const jwk of list as JsonWebKey[]) {
      const kid = jwk.kid;
      if (typeof kid !== 'string' || kid.length === 0 || (jwk.use !== undefined && jwk.use !== 'sig')) continue;
      const alg = jwk.alg === undefined ? (inferredAlg(jwk) ?? brokerAlg) : jwk.alg;
      if (!isTokenAlg(alg)) {
        this.#options.logger('warn', 'verifier: JWKS key skipped: its alg is not a task token algorithm', { kid, alg });
        continue;
      }
      try {
        const publicKey = nodeKey(createPublicKey({ key: jwk, format: 'jwk' }), alg, 'public');
        keys.set(kid, { alg, publicKey });
      } catch (error) {
        this.#options.logger('warn', 'verifier: JWKS key skipped: it does not fit its alg', { kid, alg, error: (error as Error).message });
      }
    }
    return keys;
  }
}

/** Far above any JWKS the broker serves (a few keys); bounds what a wrong or hostile URL can make us hold. */
const MAX_JWKS_BYTES = 1 << 20;

/** The body as text, refused once it passes `max` bytes (the rest is not read). */
async function boundedText(response: Response, max: number, what: string): Promise<string> {
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (declared > max) throw new Error(`JWKS ${what} is ${declared} bytes, more than ${max}`);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of (response.body ?? []) as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > max) throw new Error(`JWKS ${what} is more than ${max} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function inferredAlg(jwk: JsonWebKey): TokenAlg | undefined {
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return 'EdDSA';
  return undefined;
}
