/** The JWKS document resource servers fetch to verify task tokens offline. */
import type { Route } from '../http/ops-server.js';
import type { SigningKeyRing } from './keyring.js';

export const JWKS_PATH = '/.well-known/jwks.json';

export function jwksRoute(ring: Pick<SigningKeyRing, 'jwks'>): Route {
  return async () => ({
    status: 200,
    headers: { 'Content-Type': 'application/jwk-set+json', 'Cache-Control': 'public, max-age=60' },
    body: JSON.stringify(await ring.jwks()),
  });
}
