/**
 * The claims of a well-formed task token, for the tests that sign and check tokens directly (no
 * task behind them): each overrides only what it is about.
 */
import type { TaskTokenClaims } from '../../src/tokens/task-token.js';

export const TOKEN_ISSUER = 'spiffe://broker.test/task-broker';

/** Issued at `now` for five minutes, with a fresh `jti`; `overrides` over that. */
export function taskTokenClaims(now: Date, overrides: Partial<TaskTokenClaims> = {}): TaskTokenClaims {
  const sec = Math.floor(now.getTime() / 1000);
  return {
    iss: TOKEN_ISSUER,
    sub: 'spiffe://a.test/workload',
    aud: 'spiffe://a.test/target',
    iat: sec,
    nbf: sec,
    exp: sec + 300,
    jti: `tok-${Math.random().toString(36).slice(2)}`,
    task_id: 'task-1',
    task_hash: 'Ll0x9m3sPqLQ8pEhGx3vV7o1sKXc5qYkQvFfJbqJgkA',
    scope: 'read',
    cnf: { 'x5t#S256': '47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU' },
    ...overrides,
  };
}
