/**
 * IssueToken's rules, decided by the broker before its one round trip: the claims that bind a
 * token, its lifetime (requested, capped by the broker, the rule and the task), the scopes a
 * caller may narrow to, the policy at request time, and who may ask at all. The database's part
 * (state on the locked row, storing the token) is MemoryStore's; test/tasks/lifecycle.test.ts
 * runs the same calls against real databases.
 */
import { createLocalJWKSet, jwtVerify } from 'jose';
import { beforeEach, describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { DEFAULT_LIMITS } from '../../src/tasks/limits.js';
import { TaskAccess } from '../../src/tasks/task-access.js';
import { TokenOperations } from '../../src/tasks/token-operations.js';
import { TaskAuthority } from '../../src/tasks/authority.js';
import { SubjectTokenVerifier } from '../../src/policy/subject-tokens.js';
import { checkTaskToken, TASK_TOKEN_TYPE } from '../../src/tokens/task-token.js';
import { actor, INVOICES, ISSUER, MemoryStore, NOW, NOW_SEC, policyOf, TASK_HASH, TASK_ID, testKey, WORKER, type TestKey } from './fakes.js';

let k: TestKey;
let store: MemoryStore;

function tokens(policy = policyOf()): TokenOperations {
  const access = new TaskAccess({ issuer: ISSUER, policy, clock: () => NOW, store });
  return new TokenOperations(access, new TaskAuthority(access, new SubjectTokenVerifier()), k.ring, DEFAULT_LIMITS);
}

/** The refusal a call ends with, as kind and message. */
async function refusal(call: Promise<unknown>): Promise<{ kind: string; message: string }> {
  const err = await call.then(
    () => expect.unreachable('the call succeeded'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  const { kind, message } = err as BrokerError;
  return { kind, message };
}

beforeEach(async () => {
  k ??= await testKey();
  store = new MemoryStore();
});

describe('the token issued', () => {
  it('binds the task, its owner, its audience and the caller certificate, and verifies here and with jose', async () => {
    const issued = await tokens().issue(actor(), TASK_ID);
    const claims = {
      iss: ISSUER,
      sub: WORKER,
      aud: INVOICES,
      iat: NOW_SEC,
      nbf: NOW_SEC,
      exp: NOW_SEC + DEFAULT_LIMITS.defaultTokenTtlSeconds,
      jti: issued.tokenId,
      task_id: TASK_ID,
      task_hash: TASK_HASH,
      scope: 'invoices:read invoices:list',
      cnf: { 'x5t#S256': 'thumb-of-worker-cert' },
      ver: 2,
    };
    expect(issued).toMatchObject({
      tokenId: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/),
      expiresAt: new Date((NOW_SEC + 300) * 1000),
      scopes: ['invoices:read', 'invoices:list'],
    });
    expect(await checkTaskToken(issued.token, k.ring, { issuer: ISSUER, now: NOW })).toEqual({ ok: true, claims, kid: k.key.kid });
    const verified = await jwtVerify(issued.token, createLocalJWKSet({ keys: [k.key.publicJwk] }), {
      typ: TASK_TOKEN_TYPE,
      issuer: ISSUER,
      audience: INVOICES,
      currentDate: NOW,
    });
    expect(verified.payload).toEqual(claims);
  });

  it('is stored and audited with what identifies it, in the one operation sent', async () => {
    const issued = await tokens().issue(actor(), TASK_ID);
    const [op] = store.sent('issue');
    expect(store.ops).toHaveLength(1);
    expect(op).toMatchObject({
      task_id: TASK_ID,
      actor: WORKER,
      thumb: 'thumb-of-worker-cert',
      at: NOW.toISOString(),
      token: { jti: issued.tokenId, kid: k.key.kid, scopes: issued.scopes, issued_at: NOW.toISOString(), expires_at: issued.expiresAt.toISOString() },
      details: { token_id: issued.tokenId, audience: INVOICES, policy_rule: 'billing', policy_digest: policyOf().current()!.digest },
    });
    expect(op).not.toHaveProperty('deny');
    expect(op).not.toHaveProperty('approval');
  });
});

describe('token lifetime: the requested ttl, capped by the broker, the rule and the task', () => {
  it.each<[string, { ttlSeconds?: number; rule?: string; taskLeftSeconds?: number }, number]>([
    ['the default when none is asked', {}, DEFAULT_LIMITS.defaultTokenTtlSeconds],
    ['what is asked below every cap', { ttlSeconds: 60 }, 60],
    ["the broker's maximum", { ttlSeconds: 10_000 }, DEFAULT_LIMITS.maxTokenTtlSeconds],
    ["the rule's max_token_ttl, below the request", { ttlSeconds: 600, rule: '2m' }, 120],
    ["the rule's max_token_ttl, below the default", { rule: '90s' }, 90],
    ["the request, below the rule's max_token_ttl", { ttlSeconds: 30, rule: '2m' }, 30],
    ["the task's expiry", { ttlSeconds: 600, taskLeftSeconds: 42 }, 42],
  ])('%s', async (_name, { ttlSeconds, rule, taskLeftSeconds }, lifetime) => {
    if (taskLeftSeconds !== undefined) store.facts.expires_at = new Date(NOW.getTime() + taskLeftSeconds * 1000);
    const ops = tokens(policyOf(rule ? `    max_token_ttl: ${rule}\n` : ''));
    const issued = await ops.issue(actor(), TASK_ID, ttlSeconds === undefined ? {} : { ttlSeconds });
    expect(issued.expiresAt.getTime()).toBe(NOW.getTime() + lifetime * 1000);
    const check = await checkTaskToken(issued.token, k.ring, { issuer: ISSUER, now: NOW });
    expect(check.ok && check.claims.exp - check.claims.iat).toBe(lifetime);
  });

  it('refuses a task that expires within the second: FAILED_PRECONDITION, recorded', async () => {
    store.facts.expires_at = new Date(NOW.getTime() + 999);
    expect(await refusal(tokens().issue(actor(), TASK_ID))).toEqual({
      kind: 'failed-precondition',
      message: 'task expires in less than a second: no token can be issued',
    });
    expect(store.sent('issue')[0]).toMatchObject({ deny: { kind: 'failed-precondition' } });
    expect(store.sent('issue')[0]).not.toHaveProperty('token');
  });

  it('refuses a ttl that is not a positive whole number before anything is sent', async () => {
    expect(await refusal(tokens().issue(actor(), TASK_ID, { ttlSeconds: 0 }))).toEqual({
      kind: 'invalid-argument',
      message: 'ttl must be a positive whole number of seconds',
    });
    expect(store.ops).toEqual([]);
  });
});

describe('scopes', () => {
  it('may be narrowed to a subset of the task scopes', async () => {
    const issued = await tokens().issue(actor(), TASK_ID, { scopes: ['invoices:list'] });
    expect(issued.scopes).toEqual(['invoices:list']);
    const check = await checkTaskToken(issued.token, k.ring, { issuer: ISSUER, now: NOW });
    expect(check.ok && check.claims.scope).toBe('invoices:list');
  });

  it('outside the task scopes are PERMISSION_DENIED, with the refusal on the record', async () => {
    const requested = ['invoices:read', 'invoices:write', 'admin'];
    expect(await refusal(tokens().issue(actor(), TASK_ID, { scopes: requested }))).toEqual({
      kind: 'permission-denied',
      message: 'scopes not granted to the task: invoices:write admin',
    });
    expect(store.sent('issue')[0]).toMatchObject({
      deny: { details: { operation: 'IssueToken', reason: 'scopes not granted to the task: invoices:write admin', requested_scopes: requested } },
    });
  });

  it('that are not scope tokens are INVALID_ARGUMENT before anything is sent', async () => {
    const { kind, message } = await refusal(tokens().issue(actor(), TASK_ID, { scopes: ['invoices read'] }));
    expect(kind).toBe('invalid-argument');
    expect(message).toMatch(/^scopes: "invoices read" is not a valid scope token/);
    expect(store.ops).toEqual([]);
  });
});

describe('the policy at request time', () => {
  it('a rule that no longer allows the task denies the token, naming the policy version', async () => {
    // The task was created under an older policy that allowed invoices:delete.
    store.facts.scopes = ['invoices:read', 'invoices:delete'];
    const policy = policyOf();
    expect(await refusal(tokens(policy).issue(actor(), TASK_ID))).toEqual({
      kind: 'permission-denied',
      message: 'denied by policy: rule "billing": scope "invoices:delete" is not allowed',
    });
    expect(store.sent('issue')[0]).toMatchObject({
      deny: {
        details: {
          operation: 'IssueToken',
          reason: 'policy: rule "billing": scope "invoices:delete" is not allowed',
          policy_digest: policy.current()!.digest,
          scopes: store.facts.scopes,
        },
      },
    });
  });

  it('with no policy loaded, nothing is issued', async () => {
    const { kind, message } = await refusal(tokens(new StaticPolicySource(undefined)).issue(actor(), TASK_ID));
    expect({ kind, message }).toEqual({ kind: 'permission-denied', message: 'denied by policy: no policy is loaded: every request is denied' });
    expect(store.sent('issue')[0]).toMatchObject({ deny: { details: { policy_digest: '' } } });
  });

  it('a rule that now requires approval asks the statement to check for one on the row', async () => {
    const policy = policyOf('    require_approval: true\n');
    await expect(tokens(policy).issue(actor(), TASK_ID)).rejects.toMatchObject({ kind: 'permission-denied' });
    const approvalDenial = { reason: 'rule "billing" now requires approval and the task was not approved', digest: policy.current()!.digest };
    expect(store.sent('issue')[0]).toMatchObject({ approval: true, approval_denial: approvalDenial });
    store.approved = true;
    const issued = await tokens(policy).issue(actor(), TASK_ID);
    expect(store.sent('issue')[1]).toMatchObject({ approval: true, token: { jti: issued.tokenId } });
  });
});

describe('who may ask', () => {
  it("another workload gets NOT_FOUND, as for a missing task, and the probe is recorded on the task's chain", async () => {
    const stranger = actor('spiffe://example.org/ns/other/sa/stranger');
    expect(await refusal(tokens().issue(stranger, TASK_ID))).toEqual({ kind: 'not-found', message: 'task not found' });
    expect(store.ops).toEqual([
      expect.objectContaining({
        op: 'event',
        task_id: TASK_ID,
        type: 'access.denied',
        details: { operation: 'IssueToken', reason: 'caller is not the task owner', requested_task_id: TASK_ID },
      }),
    ]);
  });

  it("a task that does not exist is NOT_FOUND too, recorded on the caller's own chain", async () => {
    const missing = 'tsk_BBBBBBBBBBBBBBBBBBBBBBBB';
    expect(await refusal(tokens().issue(actor(), missing))).toEqual({ kind: 'not-found', message: 'task not found' });
    expect(store.ops).toEqual([
      expect.objectContaining({ op: 'event', task_id: null, type: 'access.denied', details: expect.objectContaining({ reason: 'no such task' }) }),
    ]);
  });

  it('a malformed task ID is INVALID_ARGUMENT without a read', async () => {
    expect(await refusal(tokens().issue(actor(), 'task-1'))).toEqual({ kind: 'invalid-argument', message: 'task_id is not a task ID' });
    expect(store.reads).toEqual([]);
  });

  it("reads a task's facts once and signs later tokens from the cache", async () => {
    const ops = tokens();
    await ops.issue(actor(), TASK_ID);
    await ops.issue(actor(), TASK_ID);
    expect(store.reads).toEqual([TASK_ID]);
    expect(store.sent('issue')).toHaveLength(2);
  });
});
