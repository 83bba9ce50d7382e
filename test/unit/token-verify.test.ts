/**
 * VerifyToken's part before the round trip: what is refused outright, which tokens are not
 * authentic (answered from the signature check alone and recorded on the caller's chain), and
 * what the statement is given to check revocation, state and binding on the locked task. The
 * claim checks themselves (every malformed, bad-signature and expired case, jose interop) are
 * in test/tokens/task-token.test.ts; this file adds the size bound and the domain's use of them.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { DEFAULT_LIMITS } from '../../src/tasks/limits.js';
import { TaskAccess } from '../../src/tasks/task-access.js';
import { TokenOperations } from '../../src/tasks/token-operations.js';
import { TaskAuthority } from '../../src/tasks/authority.js';
import { SubjectTokenVerifier } from '../../src/policy/subject-tokens.js';
import { checkTaskToken, MAX_TOKEN_LENGTH, signTaskToken, type TaskTokenClaims } from '../../src/tokens/task-token.js';
import { actor, INVOICES, ISSUER, MemoryStore, NOW, NOW_SEC, policyOf, TASK_HASH, TASK_ID, testKey, WORKER, type TestKey } from './fakes.js';

const RESOURCE_SERVER = actor(INVOICES, 'thumb-of-api-cert');
let k: TestKey;
let store: MemoryStore;

function claims(overrides: Partial<TaskTokenClaims> = {}): TaskTokenClaims {
  return {
    iss: ISSUER,
    sub: WORKER,
    aud: INVOICES,
    iat: NOW_SEC,
    nbf: NOW_SEC,
    exp: NOW_SEC + 300,
    jti: 'jti-1',
    task_id: TASK_ID,
    task_hash: TASK_HASH,
    scope: 'invoices:read',
    cnf: { 'x5t#S256': 'thumb-of-worker-cert' },
    ...overrides,
  };
}

function tokens(): TokenOperations {
  const access = new TaskAccess({ issuer: ISSUER, policy: policyOf(), clock: () => NOW, store });
  return new TokenOperations(access, new TaskAuthority(access, new SubjectTokenVerifier()), k.ring, DEFAULT_LIMITS);
}

beforeEach(async () => {
  k ??= await testKey();
  store = new MemoryStore();
});

describe('the size bound', () => {
  it('checkTaskToken calls a token longer than MAX_TOKEN_LENGTH malformed before any key lookup', async () => {
    const lookups: string[] = [];
    const keys = { verificationKey: (kid: string) => (lookups.push(kid), k.ring.verificationKey(kid)) };
    const token = await signTaskToken(k.key, claims());
    const oversize = `${token}${'A'.repeat(MAX_TOKEN_LENGTH - token.length + 1)}`;
    expect(await checkTaskToken(oversize, keys, { issuer: ISSUER, now: NOW })).toEqual({
      ok: false,
      reason: 'malformed',
      detail: `not a task token: longer than ${MAX_TOKEN_LENGTH} characters`,
    });
    expect(lookups).toEqual([]);
    // The bound is the only reason: the token as signed passes, with one lookup.
    expect(await checkTaskToken(token, keys, { issuer: ISSUER, now: NOW })).toMatchObject({ ok: true });
    expect(lookups).toEqual([k.key.kid]);
  });

  it('VerifyToken refuses it as INVALID_ARGUMENT, with nothing recorded', async () => {
    const err = await tokens()
      .verify(RESOURCE_SERVER, 'x'.repeat(MAX_TOKEN_LENGTH + 1))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ kind: 'invalid-argument', message: `token: at most ${MAX_TOKEN_LENGTH} characters` });
    expect(store.ops).toEqual([]);
  });
});

describe('a token that is not authentic', () => {
  it.each<[string, () => Promise<string>, string, string]>([
    ['garbage', () => Promise.resolve('not-a-token'), 'malformed', 'not a compact JWS: 1 parts instead of 3'],
    [
      'a changed payload',
      async () => {
        const [h, , s] = (await signTaskToken(k.key, claims())).split('.');
        return `${h}.${Buffer.from(JSON.stringify(claims({ task_id: 'tsk_BBBBBBBBBBBBBBBBBBBBBBBB' }))).toString('base64url')}.${s}`;
      },
      'bad-signature',
      'signature verification failed',
    ],
    ['another issuer', () => signTaskToken(k.key, claims({ iss: 'spiffe://other.test/broker' })), 'malformed', 'unexpected "iss" claim value'],
  ])('%s is answered at once and recorded on the caller chain, naming no task', async (_name, make, reason, detail) => {
    const result = await tokens().verify(RESOURCE_SERVER, await make(), { presenterThumbprint: 'thumb-of-worker-cert' });
    expect(result).toEqual({ valid: false, reason, detail, bindingChecked: true });
    expect(store.ops).toEqual([
      expect.objectContaining({
        op: 'event',
        task_id: null,
        type: 'token.verified',
        actor: INVOICES,
        details: { result: reason, detail, token_id: null, binding_checked: true },
      }),
    ]);
  });

  it("records the resource server's opt-out of the binding check", async () => {
    await tokens().verify(RESOURCE_SERVER, 'a.b.c', { skipBindingCheck: true });
    expect(store.ops[0]).toMatchObject({ details: { binding_checked: false, binding_check_skipped: true } });
  });
});

describe('an authentic token', () => {
  it("goes to the statement with its claims and the resource server's expectations; the answer is the statement's", async () => {
    store.answers.verify = { reason: 'valid', detail: '' };
    const token = await signTaskToken(k.key, claims());
    const result = await tokens().verify(RESOURCE_SERVER, token, { presenterThumbprint: 'thumb-of-worker-cert', expectedTaskHash: TASK_HASH });
    expect(result).toEqual({ valid: true, reason: 'valid', detail: '', bindingChecked: true, claims: claims() });
    expect(store.ops).toEqual([
      expect.objectContaining({
        op: 'verify',
        task_id: TASK_ID,
        jti: 'jti-1',
        expired: null,
        aud: INVOICES,
        sub: WORKER,
        task_hash: TASK_HASH,
        cnf: 'thumb-of-worker-cert',
        expected_hash: TASK_HASH,
        presenter: 'thumb-of-worker-cert',
        bearer: false,
        actor: INVOICES,
      }),
    ]);
  });

  it('that expired still goes to the statement (to be audited on its task), with why, and is never valid', async () => {
    store.answers.verify = { reason: 'expired', detail: 'expired at 2029-12-31T23:59:59.000Z' };
    const token = await signTaskToken(k.key, claims({ exp: NOW_SEC - 1, iat: NOW_SEC - 301, nbf: NOW_SEC - 301 }));
    const result = await tokens().verify(RESOURCE_SERVER, token, { presenterThumbprint: 'thumb-of-worker-cert' });
    expect(result).toEqual({ valid: false, reason: 'expired', detail: 'expired at 2029-12-31T23:59:59.000Z', bindingChecked: true });
    // tb_op_verify answers "expired" with this detail before looking at anything else.
    expect(store.sent('verify')[0]).toMatchObject({ task_id: TASK_ID, jti: 'jti-1', expired: 'expired at 2029-12-31T23:59:59.000Z' });
  });

  it('is never valid without an answer from the statement', async () => {
    const result = await tokens().verify(RESOURCE_SERVER, await signTaskToken(k.key, claims()), { presenterThumbprint: 'thumb-of-worker-cert' });
    expect(result).toMatchObject({ valid: false, reason: 'revoked' });
    expect(result).not.toHaveProperty('claims');
  });

  it('is a bearer token only when the resource server opts out and gives no presenter', async () => {
    const token = await signTaskToken(k.key, claims());
    await tokens().verify(RESOURCE_SERVER, token, { skipBindingCheck: true });
    await tokens().verify(RESOURCE_SERVER, token, { skipBindingCheck: true, presenterThumbprint: 'thumb-of-worker-cert' });
    await tokens().verify(RESOURCE_SERVER, token);
    expect(store.sent('verify').map((o) => o.bearer)).toEqual([true, false, false]);
  });
});
