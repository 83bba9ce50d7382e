/**
 * The token signing algorithms the broker issues and accepts. A module of its own (no imports)
 * so that token verification outside the broker (the verifier SDK) loads none of the key ring's
 * storage code.
 */
export type TokenAlg = 'ES256' | 'EdDSA';
export const TOKEN_ALGS: readonly TokenAlg[] = ['ES256', 'EdDSA'];

export function isTokenAlg(value: unknown): value is TokenAlg {
  return value === 'ES256' || value === 'EdDSA';
}
