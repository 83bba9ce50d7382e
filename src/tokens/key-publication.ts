/**
 * How long a signing key is published around the time it signs: the cache lifetimes between the
 * `signing_keys` table and a verifier's key set, and the pre-publication period built from them.
 *
 * A new key is published (NEXT) for the pre-publication period before it signs, so that every
 * copy of the key set held along the way has been replaced by one that lists it:
 *
 *   signing_keys ──(a replica's key ring: re-read at most KEY_REFRESH_INTERVAL_MS apart)──▶
 *   JWKS / GetSigningKeys ──(an HTTP cache: Cache-Control max-age JWKS_MAX_AGE_SECONDS)──▶
 *   verifier SDK ──(keys re-fetched once older than VERIFIER_KEY_MAX_AGE_MS)──▶ verification
 *
 * The longest chain is the sum of the three. A retired key stays published for the longest token
 * lifetime after it stopped signing (plus one refresh interval: a replica that has not re-read
 * yet may still sign with it).
 */

/** The Cache-Control max-age of /.well-known/jwks.json (src/http/ops-routes.ts sends it). */
export const JWKS_MAX_AGE_SECONDS = 60;

/** How stale a replica's key ring may get before it re-reads the table (SigningKeyRing's default). */
export const DEFAULT_KEY_REFRESH_INTERVAL_MS = 30_000;

/** The verifier SDK's default keyMaxAgeMs: its key set is re-fetched (in the background) once this old. */
export const VERIFIER_KEY_MAX_AGE_MS = 5 * 60_000;

/** The pre-publication period that covers a chain of caches: each one's lifetime, added up. */
export function prePublicationChainMs(chain: { jwksMaxAgeMs: number; keyRefreshIntervalMs: number; verifierKeyMaxAgeMs: number }): number {
  return chain.jwksMaxAgeMs + chain.keyRefreshIntervalMs + chain.verifierKeyMaxAgeMs;
}

/** The default pre-publication period: 60 s + 30 s + 5 min = 6 min 30 s. */
export const DEFAULT_PRE_PUBLICATION_MS = prePublicationChainMs({
  jwksMaxAgeMs: JWKS_MAX_AGE_SECONDS * 1000,
  keyRefreshIntervalMs: DEFAULT_KEY_REFRESH_INTERVAL_MS,
  verifierKeyMaxAgeMs: VERIFIER_KEY_MAX_AGE_MS,
});

/**
 * The shortest pre-publication period a key ring accepts: the part of the chain the broker itself
 * controls (the JWKS cache lifetime and the replicas' refresh interval). Shorter, an HTTP cache
 * that fetched the JWKS just before a rotation could still serve it when the new key signs.
 */
export function minimumPrePublicationMs(keyRefreshIntervalMs = DEFAULT_KEY_REFRESH_INTERVAL_MS): number {
  return JWKS_MAX_AGE_SECONDS * 1000 + keyRefreshIntervalMs;
}

/** How long a retired key stays published after it stopped signing. */
export function retiredPublicationMs(maxTokenTtlSeconds: number, keyRefreshIntervalMs: number): number {
  return maxTokenTtlSeconds * 1000 + keyRefreshIntervalMs;
}

/** A duration for a message: 6m30s, 1m30s, 15m30s, 2h. */
export function readableDuration(ms: number): string {
  const total = Math.round(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const text = `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s ? `${s}s` : ''}`;
  return text || '0s';
}
