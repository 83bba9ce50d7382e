/**
 * The broker's main job over real mTLS, against a real PostgreSQL and against PGlite: every
 * RPC, every VerifyToken reason, idempotent create, the stranger's NOT_FOUND (audited),
 * revoke-on-completion, expiry, and a resource server verifying tokens on its own via the JWKS.
 */
import * as grpc from '@grpc/grpc-js';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import { createHash, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, PARTNER, STRANGER, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';

function spec(overrides: Partial<NonNullable<CreateTaskRequest['spec']>> = {}): CreateTaskRequest['spec'] {
  return {
    action: 'invoice.export',
    resources: ['invoices/2026-11'],
    audience: API,
    scopes: ['invoices:read', 'invoices:list'],
    params: { fields: { format: { stringValue: 'csv', kind: 'stringValue' }, limit: { numberValue: 100, kind: 'numberValue' } } },
    ttl: { seconds: 600 },
    ...overrides,
  };
}

const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (err: grpc.ServiceError) => grpc.status[err.code],
  );

describe.each(STORES)('task lifecycle over mTLS on %s', (kind) => {
  let t: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  let stranger: BrokerClient;
  let workerThumbprint: string;

  beforeAll(async () => {
    t = await startTestBroker(kind);
    [worker, api, stranger] = await Promise.all([t.client(WORKER), t.client(API), t.client(STRANGER)]);
    workerThumbprint = (await worker.whoAmI()).certThumbprint;
  });
  afterAll(async () => {
    await t?.close();
  });

  const events = async (taskId: string) => (await verifyTaskTrail(t.broker.store.db, taskId)).trail.map((e) => e.type);

  it('CreateTask binds the task to the caller and to the hash of its canonical spec', async () => {
    const res = await worker.createTask({ spec: spec() });
    const task = res.task!;
    expect(task.taskId).toMatch(/^tsk_[A-Za-z0-9_-]{24}$/);
    expect(task.ownerSpiffeId).toBe(WORKER);
    expect(task.state).toBe('TASK_STATE_ACTIVE');
    expect(res.replayed).toBe(false);
    // Anyone can recompute the hash from the spec: RFC 8785 sorts keys, no whitespace.
    const expected = `{"action":"invoice.export","audience":"${API}","params":{"format":"csv","limit":100},"resources":["invoices/2026-11"],"scopes":["invoices:read","invoices:list"],"ttl_seconds":600}`;
    expect(res.canonicalSpec).toBe(expected);
    expect(task.taskHash).toBe(createHash('sha256').update(expected).digest('base64url'));
    expect(Number(task.expiresAt!.seconds) - Number(task.createdAt!.seconds)).toBe(600);
    expect(task.spec?.params?.fields?.format?.stringValue).toBe('csv');
    expect(await events(task.taskId)).toEqual(['task.created']);
  });

  it('task IDs are distinct and carry at least 128 bits', async () => {
    const ids = await Promise.all(Array.from({ length: 20 }, () => worker.createTask({ spec: spec() }).then((r) => r.task!.taskId)));
    expect(new Set(ids).size).toBe(20);
    for (const id of ids) expect(Buffer.from(id.slice(4), 'base64url').length * 8).toBeGreaterThanOrEqual(128);
  });

  it('an idempotent retry returns the same task; the same key with another spec is refused', async () => {
    const first = await worker.createTask({ spec: spec(), idempotencyKey: 'job-42' });
    const again = await worker.createTask({ spec: spec(), idempotencyKey: 'job-42' });
    expect(again.task!.taskId).toBe(first.task!.taskId);
    expect(again.replayed).toBe(true);
    const other = worker.createTask({ spec: spec({ scopes: ['invoices:read'] }), idempotencyKey: 'job-42' });
    await expect(other).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS, details: expect.stringMatching(/different spec/) });
    // Keys are per owner: another workload's key of the same name is its own.
    const strangers = await stranger.createTask({ spec: spec(), idempotencyKey: 'job-42' });
    expect(strangers.task!.taskId).not.toBe(first.task!.taskId);
    expect(await events(first.task!.taskId)).toEqual(['task.created', 'task.create_replayed', 'access.denied']);
  });

  it('concurrent creates with one idempotency key make one task', async () => {
    const results = await Promise.all(Array.from({ length: 8 }, () => worker.createTask({ spec: spec(), idempotencyKey: 'race-1' })));
    expect(new Set(results.map((r) => r.task!.taskId)).size).toBe(1);
    expect(results.filter((r) => !r.replayed)).toHaveLength(1);
  });

  it.each([
    ['no spec', { spec: null }, /spec is required/],
    ['a bad action', { spec: spec({ action: 'drop table;' }) }, /spec.action/],
    ['an audience that is not a SPIFFE ID', { spec: spec({ audience: 'https://api.example.com' }) }, /spec.audience: spiffeid: scheme/],
    ['no scopes', { spec: spec({ scopes: [] }) }, /at least one scope/],
    ['a duplicate scope', { spec: spec({ scopes: ['a', 'a'] }) }, /listed twice/],
    ['a scope with a space', { spec: spec({ scopes: ['a b'] }) }, /not a valid scope token/],
    ['a fractional ttl', { spec: spec({ ttl: { seconds: 1, nanos: 5 } }) }, /whole seconds/],
    ['a ttl over the maximum', { spec: spec({ ttl: { seconds: 10 * 86_400 } }) }, /at most 86400s/],
    [
      'a __proto__ key in params',
      { spec: spec({ params: { fields: { ['__proto__']: { stringValue: 'x', kind: 'stringValue' } } } }) },
      /"__proto__" is not allowed/,
    ],
    ['a NUL character in params', { spec: spec({ params: { fields: { a: { stringValue: 'x\u0000y', kind: 'stringValue' } } } }) }, /NUL character/],
    [
      'a huge params object',
      { spec: spec({ params: { fields: { blob: { stringValue: 'x'.repeat(20_000), kind: 'stringValue' } } } }) },
      /spec.params: at most/,
    ],
  ] as const)('CreateTask with %s is INVALID_ARGUMENT and writes nothing', async (_label, request, message) => {
    const before = await t.broker.store.db
      .selectFrom('tasks')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .executeTakeFirstOrThrow();
    await expect(worker.createTask(request as CreateTaskRequest)).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(message),
    });
    const after = await t.broker.store.db
      .selectFrom('tasks')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .executeTakeFirstOrThrow();
    expect(Number(after.n)).toBe(Number(before.n));
  });

  it('GetTask returns the task to its owner and records the poll', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const polled = await worker.getTask(task!.taskId);
    expect(polled.task).toMatchObject({ taskId: task!.taskId, state: 'TASK_STATE_ACTIVE', taskHash: task!.taskHash });
    expect(await events(task!.taskId)).toEqual(['task.created', 'task.polled']);
  });

  it('another identity gets NOT_FOUND for every follow-up on the task, exactly as for an unknown task, and each attempt is audited', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const id = task!.taskId;
    const unknown = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';
    for (const call of [
      (c: BrokerClient, taskId: string) => c.getTask(taskId),
      (c: BrokerClient, taskId: string) => c.issueToken({ taskId }),
      (c: BrokerClient, taskId: string) => c.completeTask(taskId, 'done'),
      (c: BrokerClient, taskId: string) => c.cancelTask(taskId, 'no'),
    ]) {
      const real = await call(stranger, id).catch((e: grpc.ServiceError) => e);
      const none = await call(stranger, unknown).catch((e: grpc.ServiceError) => e);
      expect(real).toMatchObject({ code: grpc.status.NOT_FOUND, details: 'task not found' });
      expect(none).toMatchObject({ code: grpc.status.NOT_FOUND, details: 'task not found' });
    }
    // A workload from the federated trust domain is a stranger too.
    const partner = await t.client(PARTNER);
    await expect(partner.getTask(id)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });

    const trail = await verifyTaskTrail(t.broker.store.db, id);
    expect(trail.ok).toBe(true);
    const denied = trail.trail.filter((e) => e.type === 'access.denied');
    expect(denied.map((e) => e.details.operation)).toEqual(['GetTask', 'IssueToken', 'CompleteTask', 'CancelTask', 'GetTask']);
    expect(denied[0]).toMatchObject({ actorSpiffeId: STRANGER, details: { reason: 'caller is not the task owner' } });
    expect(denied[0]?.actorCertThumbprint).toBe((await stranger.whoAmI()).certThumbprint);
    expect(denied[4]?.actorSpiffeId).toBe(PARTNER);
    // The task itself is untouched.
    expect((await worker.getTask(id)).task?.state).toBe('TASK_STATE_ACTIVE');
    // Probes of an unknown ID are on the prober's own chain.
    const probes = await verifyTaskTrail(t.broker.store.db, `actor:${STRANGER}`);
    expect(probes.ok).toBe(true);
    expect(probes.trail.filter((e) => e.details.requested_task_id === unknown)).toHaveLength(4);
  });

  it("a stranger's flood of probes on one task writes 10 denials a minute to its trail and counts the rest in the next one", async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const id = task!.taskId;
    for (let i = 0; i < 25; i++) await expect(stranger.getTask(id)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND, details: 'task not found' });
    let denied = (await verifyTaskTrail(t.broker.store.db, id)).trail.filter((e) => e.type === 'access.denied');
    expect(denied).toHaveLength(10);
    expect(denied.every((e) => e.details.suppressed_denials === undefined)).toBe(true);
    // Another prober has a budget of its own; the owner is never throttled.
    const partner = await t.client(PARTNER);
    await expect(partner.getTask(id)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    expect((await worker.getTask(id)).task?.state).toBe('TASK_STATE_ACTIVE');
    t.clock.advance(61_000);
    try {
      await expect(stranger.getTask(id)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    } finally {
      t.clock.advance(-61_000);
    }
    const trail = await verifyTaskTrail(t.broker.store.db, id);
    expect(trail.ok).toBe(true);
    denied = trail.trail.filter((e) => e.type === 'access.denied');
    expect(denied.filter((e) => e.actorSpiffeId === STRANGER)).toHaveLength(11);
    expect(denied.filter((e) => e.actorSpiffeId === PARTNER)).toHaveLength(1);
    expect(denied.at(-1)).toMatchObject({ actorSpiffeId: STRANGER, details: { suppressed_denials: 15 } });
  });

  it('control characters in an outcome are INVALID_ARGUMENT, not an internal error', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    await expect(worker.completeTask(task!.taskId, 'done\u0000')).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/control characters/),
    });
    expect((await worker.getTask(task!.taskId)).task?.state).toBe('TASK_STATE_ACTIVE');
  });

  it('a token whose header smuggles a NUL character is answered and audited, not an internal error', async () => {
    const header = Buffer.from(JSON.stringify({ alg: 'ES256', typ: 'task+jwt', kid: 'k\u0000id' })).toString('base64url');
    const res = await api.verifyToken({ token: `${header}.${Buffer.from('{}').toString('base64url')}.AAAA` });
    expect(res.valid).toBe(false);
    expect(['VERIFY_TOKEN_REASON_MALFORMED', 'VERIFY_TOKEN_REASON_BAD_SIGNATURE']).toContain(res.reason);
  });

  it('a malformed task ID is INVALID_ARGUMENT', async () => {
    await expect(worker.getTask('not-a-task')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(worker.getTask('')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('IssueToken mints a JWT per the contract, bound to the caller certificate', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const before = Math.floor(t.clock.now().getTime() / 1000);
    const issued = await worker.issueToken({ taskId: task!.taskId, scopes: ['invoices:read'] });
    const [headerPart] = issued.token.split('.');
    const header = JSON.parse(Buffer.from(headerPart!, 'base64url').toString()) as Record<string, unknown>;
    expect(header).toMatchObject({ typ: 'task+jwt', alg: 'ES256' });
    expect(typeof header.kid).toBe('string');
    const claims = decodeJwt(issued.token);
    expect(claims).toMatchObject({
      iss: BROKER_ID,
      sub: WORKER,
      aud: API,
      jti: issued.tokenId,
      task_id: task!.taskId,
      task_hash: task!.taskHash,
      scope: 'invoices:read',
      cnf: { 'x5t#S256': workerThumbprint },
    });
    expect(claims.iat).toBeGreaterThanOrEqual(before);
    expect(claims.nbf).toBe(claims.iat);
    expect(claims.exp! - claims.iat!).toBe(300); // default lifetime: 5 minutes
    const leaf = new X509Certificate(t.svidOf(WORKER).certChainPem);
    expect(claims.cnf).toEqual({ 'x5t#S256': createHash('sha256').update(leaf.raw).digest('base64url') });
    expect(await events(task!.taskId)).toEqual(['task.created', 'token.issued']);
  });

  it('token lifetime: the requested ttl, capped by the maximum and by the task expiry', async () => {
    const { task } = await worker.createTask({ spec: spec({ ttl: { seconds: 120 } }) });
    const short = decodeJwt((await worker.issueToken({ taskId: task!.taskId, ttl: { seconds: 30 } })).token);
    expect(short.exp! - short.iat!).toBe(30);
    const capped = decodeJwt((await worker.issueToken({ taskId: task!.taskId, ttl: { seconds: 3600 } })).token);
    expect(capped.exp).toBeLessThanOrEqual(Number(task!.expiresAt!.seconds));
    expect(capped.exp! - capped.iat!).toBeLessThanOrEqual(120);
  });

  it('requested scopes must be a subset of the task scopes', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    await expect(worker.issueToken({ taskId: task!.taskId, scopes: ['invoices:write'] })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: expect.stringMatching(/not granted to the task: invoices:write/),
    });
    expect(await events(task!.taskId)).toEqual(['task.created', 'access.denied']);
    const all = await worker.issueToken({ taskId: task!.taskId });
    expect(all.scopes).toEqual(['invoices:read', 'invoices:list']);
  });

  describe('VerifyToken', () => {
    let taskId: string;
    let taskHash: string;
    let token: string;
    beforeAll(async () => {
      const { task } = await worker.createTask({ spec: spec() });
      taskId = task!.taskId;
      taskHash = task!.taskHash;
      token = (await worker.issueToken({ taskId })).token;
    });

    it('valid for the audience, with the presenter bound and the expected hash', async () => {
      const res = await api.verifyToken({ token, presenterCertThumbprint: workerThumbprint, expectedTaskHash: taskHash });
      expect(res).toMatchObject({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID', bindingChecked: true });
      expect(res.claims).toMatchObject({
        subject: WORKER,
        audience: API,
        taskId,
        taskHash,
        scopes: ['invoices:read', 'invoices:list'],
        cnfX5tS256: workerThumbprint,
        issuer: BROKER_ID,
      });
    });

    it('valid with the presenter certificate given as DER', async () => {
      const der = new X509Certificate(t.svidOf(WORKER).certChainPem).raw;
      const res = await api.verifyToken({ token, presenterCertDer: der });
      expect(res).toMatchObject({ valid: true, bindingChecked: true });
    });

    it('PRESENTER_REQUIRED without a presenter certificate: a certificate-bound token is not a bearer token by default', async () => {
      const res = await api.verifyToken({ token });
      expect(res).toMatchObject({
        valid: false,
        reason: 'VERIFY_TOKEN_REASON_PRESENTER_REQUIRED',
        bindingChecked: false,
        claims: null,
        detail: expect.stringMatching(/skip_binding_check/),
      });
      const trail = await verifyTaskTrail(t.broker.store.db, taskId);
      expect(trail.trail.at(-1)).toMatchObject({
        type: 'token.verified',
        actorSpiffeId: API,
        details: { result: 'presenter-required', binding_checked: false },
      });
    });

    it('valid as a bearer token only when the resource server opts out of the binding check, and the opt-out is on the record', async () => {
      const res = await api.verifyToken({ token, skipBindingCheck: true });
      expect(res).toMatchObject({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID', bindingChecked: false, detail: expect.stringMatching(/bearer token/) });
      const trail = await verifyTaskTrail(t.broker.store.db, taskId);
      expect(trail.trail.at(-1)).toMatchObject({
        type: 'token.verified',
        actorSpiffeId: API,
        details: { result: 'valid', binding_checked: false, binding_check_skipped: true },
      });
      // A presenter given along with the opt-out is still checked.
      const mismatched = await api.verifyToken({ token, skipBindingCheck: true, presenterCertThumbprint: (await stranger.whoAmI()).certThumbprint });
      expect(mismatched).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_BINDING_MISMATCH' });
    });

    it('BINDING_MISMATCH when another certificate presents it', async () => {
      const res = await api.verifyToken({ token, presenterCertThumbprint: (await stranger.whoAmI()).certThumbprint });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_BINDING_MISMATCH', claims: null });
    });

    it('AUDIENCE_MISMATCH when the caller is not the audience', async () => {
      const res = await stranger.verifyToken({ token, presenterCertThumbprint: workerThumbprint });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH', claims: null });
      const self = await worker.verifyToken({ token });
      expect(self.reason).toBe('VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH');
    });

    it('TASK_HASH_MISMATCH when the resource server expects another spec', async () => {
      const res = await api.verifyToken({
        token,
        presenterCertThumbprint: workerThumbprint,
        expectedTaskHash: createHash('sha256').update('{}').digest('base64url'),
      });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_TASK_HASH_MISMATCH' });
    });

    it.each([
      ['garbage', 'not-a-jwt'],
      ['an empty token', ''],
      ['a JWT without typ task+jwt', `${Buffer.from('{"alg":"ES256","kid":"x"}').toString('base64url')}.e30.AAAA`],
      ['alg none', `${Buffer.from('{"alg":"none","typ":"task+jwt"}').toString('base64url')}.${Buffer.from('{"sub":"x"}').toString('base64url')}.`],
    ])('MALFORMED for %s', async (_label, bad) => {
      const res = await api.verifyToken({ token: bad });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_MALFORMED', claims: null });
    });

    it('BAD_SIGNATURE for a token whose payload was changed', async () => {
      const [h, p, s] = token.split('.');
      const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as Record<string, unknown>;
      claims.scope = 'invoices:read invoices:write';
      const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
      const res = await api.verifyToken({ token: forged });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_BAD_SIGNATURE' });
    });

    it('EXPIRED once its exp has passed', async () => {
      const { task } = await worker.createTask({ spec: spec() });
      const short = await worker.issueToken({ taskId: task!.taskId, ttl: { seconds: 5 } });
      t.clock.advance(6_000);
      try {
        const res = await api.verifyToken({ token: short.token });
        expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_EXPIRED' });
      } finally {
        t.clock.advance(-6_000);
      }
      const trail = await verifyTaskTrail(t.broker.store.db, task!.taskId);
      expect(trail.trail.at(-1)).toMatchObject({ type: 'token.verified', details: { result: 'expired' } });
    });

    it('TASK_NOT_ACTIVE when the task row left ACTIVE without its tokens (defence in depth)', async () => {
      const { task } = await worker.createTask({ spec: spec() });
      const issued = await worker.issueToken({ taskId: task!.taskId });
      // Only a broken writer could do this; the verifier must still not say valid.
      await t.broker.store.db
        .updateTable('tasks')
        .set({ state: 'REVOKED', ended_at: new Date(), ended_by: 'test', end_reason: 'test' })
        .where('task_id', '=', task!.taskId)
        .execute();
      const res = await api.verifyToken({ token: issued.token });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_TASK_NOT_ACTIVE' });
    });

    it('every verification is audited on the task chain, with the resource server as actor', async () => {
      const trail = await verifyTaskTrail(t.broker.store.db, taskId);
      expect(trail.ok).toBe(true);
      const verified = trail.trail.filter((e) => e.type === 'token.verified');
      expect(verified.length).toBeGreaterThanOrEqual(5);
      expect(verified[0]).toMatchObject({ actorSpiffeId: API, details: { result: 'valid', binding_checked: true } });
    });
  });

  it('CompleteTask revokes every token of the task at once; the token then verifies as REVOKED', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const tokens = await Promise.all([1, 2, 3].map(() => worker.issueToken({ taskId: task!.taskId })));
    expect((await api.verifyToken({ token: tokens[0]!.token, presenterCertThumbprint: workerThumbprint })).valid).toBe(true);
    const done = await worker.completeTask(task!.taskId, 'exported');
    expect(done.revokedTokens).toBe(3);
    expect(done.task).toMatchObject({ state: 'TASK_STATE_COMPLETED', endedBy: WORKER, endReason: 'exported' });
    for (const { token } of tokens) {
      const res = await api.verifyToken({ token, presenterCertThumbprint: workerThumbprint });
      expect(res).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED', detail: expect.stringMatching(/task completed/) });
    }
    // Terminal is final.
    await expect(worker.issueToken({ taskId: task!.taskId })).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: expect.stringMatching(/COMPLETED/),
    });
    await expect(worker.completeTask(task!.taskId, 'again')).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await expect(worker.cancelTask(task!.taskId, 'late')).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    expect((await worker.getTask(task!.taskId)).task?.state).toBe('TASK_STATE_COMPLETED');
    const trail = await verifyTaskTrail(t.broker.store.db, task!.taskId);
    expect(trail.ok).toBe(true);
    expect(trail.trail.find((e) => e.type === 'task.completed')).toMatchObject({ actorSpiffeId: WORKER, details: { revoked_tokens: 3, reason: 'exported' } });
  });

  it('CancelTask ends the task and revokes its tokens', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const { token } = await worker.issueToken({ taskId: task!.taskId });
    const res = await worker.cancelTask(task!.taskId, 'user aborted');
    expect(res).toMatchObject({ revokedTokens: 1, task: { state: 'TASK_STATE_CANCELLED', endReason: 'user aborted' } });
    expect((await api.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
  });

  it('an expired task is EXPIRED for its owner at once and swept in the background; its tokens die with it', async () => {
    const { task } = await worker.createTask({ spec: spec({ ttl: { seconds: 60 } }) });
    const { token } = await worker.issueToken({ taskId: task!.taskId, ttl: { seconds: 60 } });
    const { task: other } = await worker.createTask({ spec: spec({ ttl: { seconds: 60 } }) });
    t.clock.advance(61_000);
    try {
      expect(await t.broker.sweep()).toBeGreaterThanOrEqual(2);
      expect((await worker.getTask(task!.taskId)).task).toMatchObject({ state: 'TASK_STATE_EXPIRED', endedBy: BROKER_ID });
      expect(await codeOf(worker.issueToken({ taskId: other!.taskId }))).toBe('FAILED_PRECONDITION');
      const row = await t.broker.store.db
        .selectFrom('tokens')
        .select(['revoked_at', 'revoke_reason'])
        .where('task_id', '=', task!.taskId)
        .executeTakeFirstOrThrow();
      expect(row.revoke_reason).toBe('task expired');
      expect((await api.verifyToken({ token })).valid).toBe(false);
      const trail = await verifyTaskTrail(t.broker.store.db, task!.taskId);
      expect(trail.trail.find((e) => e.type === 'task.expired')).toMatchObject({ actorSpiffeId: BROKER_ID, actorCertThumbprint: null });
      expect(await t.broker.sweep()).toBe(0);
    } finally {
      t.clock.advance(-61_000);
    }
  });

  it('a resource server verifies the token on its own with the JWKS, and refuses it when cnf does not match the presenter', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const { token } = await worker.issueToken({ taskId: task!.taskId });
    const jwks = createRemoteJWKSet(new URL(t.jwksUrl));
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: BROKER_ID,
      audience: API,
      typ: 'task+jwt',
      algorithms: ['ES256'],
      currentDate: t.clock.now(),
    });
    expect(protectedHeader.kid).toBeDefined();
    const cnf = payload.cnf as Record<string, string>;
    // The resource server compares cnf with the certificate of the mTLS peer that presented it.
    const presenter = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
    expect(cnf['x5t#S256']).toBe(presenter(t.svidOf(WORKER).certChainPem));
    expect(cnf['x5t#S256']).not.toBe(presenter(t.svidOf(STRANGER).certChainPem));
    await expect(jwtVerify(token, jwks, { issuer: BROKER_ID, audience: 'spiffe://a.test/other', currentDate: t.clock.now() })).rejects.toThrow(/aud/);
  });

  it('the x-request-id of a call is echoed and recorded in its audit event', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'req-abc-123');
    const res = await worker.createTask({ spec: spec() }, { metadata });
    const trail = await verifyTaskTrail(t.broker.store.db, res.task!.taskId);
    expect(trail.trail[0]?.requestId).toBe('req-abc-123');
  });

  it('every task chain written by this suite verifies', async () => {
    const ids = await t.broker.store.db.selectFrom('audit_chains').select('chain_id').execute();
    expect(ids.length).toBeGreaterThan(10);
    for (const { chain_id } of ids) expect((await verifyTaskTrail(t.broker.store.db, chain_id)).ok, chain_id).toBe(true);
  });
});
