/**
 * The principal behind a task, over real mTLS on PostgreSQL and PGlite: a subject token from a
 * test IdP (its own key pair and JWKS file) binds the task to iss, sub and sid, which go into
 * the task, its hash, every event of its trail, its tokens and its delegated children; forged,
 * foreign, mis-addressed, expired and unsigned tokens are refused and on the record; a rule
 * that requires a principal refuses a task without one; bind_session turns another person's or
 * another session's follow-up into NOT_FOUND, as for a stranger.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { unaryCall, type BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { subjectIssuersYaml, testIdp, type TestIdp } from '../helpers/idp.js';
import { ADMIN, policyOf } from '../helpers/policy.js';

const TOOL = 'spiffe://a.test/ns/tools/sa/runner';

const policyText = (idp: TestIdp) => `
version: 1
admins: [${ADMIN}]
${subjectIssuersYaml(idp)}
rules:
  - name: payroll
    callers: {spiffe_ids: ["${WORKER}"]}
    actions: [payroll.run]
    audiences: ["${API}"]
    scopes: [payroll:write]
    principals:
      issuers: [${idp.issuer}]
      claims: {groups: payroll}
    bind_session: true
    delegation:
      to: ["${TOOL}"]
      max_depth: 1
  - name: approvals
    callers: {spiffe_ids: ["${WORKER}"]}
    actions: [release.sign]
    audiences: ["${API}"]
    scopes: [sign]
    require_approval:
      approvers:
        issuers: [${idp.issuer}]
        claims: {groups: approvers}
  - name: reports
    callers: {spiffe_ids: ["${WORKER}"]}
    actions: [report.build]
    audiences: ["${API}"]
    scopes: [reports:read]
`;

const payroll = (): CreateTaskRequest['spec'] => ({
  action: 'payroll.run',
  resources: ['payroll/2026-11'],
  audience: API,
  scopes: ['payroll:write'],
  ttl: { seconds: 600 },
});
const report = (): CreateTaskRequest['spec'] => ({ action: 'report.build', resources: [], audience: API, scopes: ['reports:read'], ttl: { seconds: 600 } });

describe.each(STORES)('the principal behind a task on %s', (kind) => {
  let t: TestBroker;
  let idp: TestIdp;
  let worker: BrokerClient;
  let tool: BrokerClient;

  beforeAll(async () => {
    idp = await testIdp();
    t = await startTestBroker(kind, { policy: new StaticPolicySource(policyOf(policyText(idp))) });
    [worker, tool] = await Promise.all([t.client(WORKER), t.client(TOOL)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  const trail = async (taskId: string) => (await verifyTaskTrail(t.broker.store.db, taskId)).trail;
  const actorDenials = async () =>
    t.broker.store.db
      .selectFrom('audit_events')
      .select(['details'])
      .where('chain_id', '=', `actor:${WORKER}`)
      .where('event_type', '=', 'access.denied')
      .orderBy('event_id')
      .execute();

  it('a valid subject token binds the task to iss, sub and sid: in the task, its hash, every event, the tokens and a delegated child', async () => {
    const subjectToken = await idp.token({ groups: ['payroll', 'staff'] });
    const res = await worker.createTask({ spec: payroll(), subjectToken });
    const task = res.task!;
    expect(task.principal).toEqual({ issuer: idp.issuer, subject: 'alice', sessionId: 'session-1' });
    const canonical = JSON.parse(res.canonicalSpec) as Record<string, unknown>;
    expect(canonical.principal).toEqual({ iss: idp.issuer, sub: 'alice', sid: 'session-1' });
    expect(task.taskHash).toBe(createHash('sha256').update(res.canonicalSpec).digest('base64url'));

    const issued = await unaryCall<{ token: string }>((md, o, cb) => worker.raw.IssueToken({ taskId: task.taskId, subjectToken }, md, o, cb));
    expect(decodeJwt(issued.token).principal).toEqual({ iss: idp.issuer, sub: 'alice', sid: 'session-1' });

    const child = await unaryCall<{ task: { taskId: string; principal: unknown } | null }>((md, o, cb) =>
      worker.raw.DelegateTask({ parentTaskId: task.taskId, delegatee: TOOL, spec: {}, subjectToken }, md, o, cb),
    );
    expect(child.task!.principal).toEqual(task.principal);
    const childToken = await unaryCall<{ token: string }>((md, o, cb) => tool.raw.IssueToken({ taskId: child.task!.taskId, subjectToken }, md, o, cb));
    expect(decodeJwt(childToken.token)).toMatchObject({ principal: { sub: 'alice', sid: 'session-1' }, act: { sub: WORKER } });

    const events = await trail(task.taskId);
    expect(events.length).toBeGreaterThanOrEqual(3);
    for (const e of events) expect(e.details.principal, e.type).toEqual({ iss: idp.issuer, sub: 'alice', sid: 'session-1' });
  });

  it('forged, foreign, mis-addressed, expired, unsigned and garbage subject tokens are refused with the reason, and on the record', async () => {
    const before = (await actorDenials()).length;
    const now = Math.floor(Date.now() / 1000);
    const cases: Array<[string, string, keyof typeof grpc.status, RegExp]> = [
      ['forged signature', await idp.forged({ groups: ['payroll'] }), 'PERMISSION_DENIED', /signature/],
      ['wrong issuer', await idp.token({ iss: 'https://evil.test', groups: ['payroll'] }), 'PERMISSION_DENIED', /evil\.test/],
      ['wrong audience', await idp.token({ aud: 'someone-else', groups: ['payroll'] }), 'PERMISSION_DENIED', /aud/],
      ['expired', await idp.token({ iat: now - 1200, exp: now - 600, groups: ['payroll'] }), 'INVALID_ARGUMENT', /expired/],
      ['alg none', idp.unsigned({ groups: ['payroll'] }), 'PERMISSION_DENIED', /none/],
      ['not a JWT', 'not-a-jwt', 'INVALID_ARGUMENT', /.+/],
    ];
    for (const [what, subjectToken, code, reason] of cases) {
      const err = await worker.createTask({ spec: payroll(), subjectToken }).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err, what).toBeDefined();
      expect(grpc.status[err!.code], what).toBe(code);
      expect(err!.details, what).toMatch(/^subject_token refused: /);
      expect(err!.details, what).toMatch(reason);
    }
    const recorded = (await actorDenials()).slice(before);
    expect(recorded).toHaveLength(cases.length);
    for (const r of recorded) expect(r.details).toMatchObject({ operation: 'CreateTask', reason: expect.stringMatching(/^subject_token refused/) });
  });

  it('a rule that requires a principal refuses a task without one, or with a principal whose claims do not match', async () => {
    await expect(worker.createTask({ spec: payroll() })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: expect.stringMatching(/principal/),
    });
    const notPayroll = await idp.token({ groups: ['sales'] });
    await expect(worker.createTask({ spec: payroll(), subjectToken: notPayroll })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: expect.stringMatching(/groups/),
    });
    // A rule without principals still takes a principal and binds it.
    const bound = await worker.createTask({ spec: report(), subjectToken: await idp.token({}) });
    expect(bound.task!.principal).toMatchObject({ subject: 'alice' });
  });

  it("require_approval naming approvers by claim: the approval needs a matching approver token, not the principal's; the approver is recorded apart from the admin", async () => {
    const task = (
      await worker.createTask({
        spec: { action: 'release.sign', resources: ['release/v2.0.0'], audience: API, scopes: ['sign'], ttl: { seconds: 600 } },
        subjectToken: await idp.token({ groups: ['approvers'] }),
      })
    ).task!;
    expect(task.state).toBe('TASK_STATE_PENDING_APPROVAL');
    const admin = await t.adminClient(ADMIN);
    const approve = async (approverToken: string) =>
      unaryCall<{ task: { state: string; approvedBy: string; approver: unknown } | null }>((md, o, cb) =>
        admin.raw.ApproveTask({ taskId: task.taskId, comment: 'ok', approverToken }, md, o, cb),
      ).then(
        (r) => r,
        (e: grpc.ServiceError) => ({ code: grpc.status[e.code], details: e.details }),
      );
    expect(await approve('')).toMatchObject({ code: 'PERMISSION_DENIED', details: expect.stringMatching(/approver_token .* is required/) });
    expect(await approve(await idp.token({ groups: ['approvers'] }))).toMatchObject({
      code: 'PERMISSION_DENIED',
      details: expect.stringMatching(/principal cannot approve/),
    });
    expect(await approve(await idp.token({ sub: 'bob', groups: ['staff'] }))).toMatchObject({
      code: 'PERMISSION_DENIED',
      details: expect.stringMatching(/groups/),
    });
    expect(await approve(await idp.forged({ sub: 'carol', groups: ['approvers'] }))).toMatchObject({
      code: 'PERMISSION_DENIED',
      details: expect.stringMatching(/approver_token refused/),
    });
    const approved = await approve(await idp.token({ sub: 'carol', sid: 'carol-session', groups: ['approvers'] }));
    expect(approved).toMatchObject({
      task: { state: 'TASK_STATE_ACTIVE', approvedBy: ADMIN, approver: { issuer: idp.issuer, subject: 'carol', sessionId: 'carol-session' } },
    });
    const events = await trail(task.taskId);
    expect(events.filter((e) => e.type === 'access.denied').length).toBeGreaterThanOrEqual(3);
    expect(events.find((e) => e.type === 'task.approved')!.details).toMatchObject({
      approver: ADMIN,
      approver_principal: { iss: idp.issuer, sub: 'carol' },
      principal: { sub: 'alice' },
    });
  });

  it('bind_session: a follow-up with another sub or another sid, or without a subject token, is NOT_FOUND and audited; the same session goes on', async () => {
    const subjectToken = await idp.token({ groups: ['payroll'] });
    const task = (await worker.createTask({ spec: payroll(), subjectToken })).task!;
    const get = (token?: string) =>
      unaryCall<{ task: unknown }>((md, o, cb) => worker.raw.GetTask({ taskId: task.taskId, subjectToken: token ?? '' }, md, o, cb));
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'OK',
        (e: grpc.ServiceError) => grpc.status[e.code],
      );
    expect(await code(get())).toBe('NOT_FOUND');
    expect(await code(get(await idp.token({ sub: 'mallory', groups: ['payroll'] })))).toBe('NOT_FOUND');
    expect(await code(get(await idp.token({ sid: 'session-2', groups: ['payroll'] })))).toBe('NOT_FOUND');
    const otherSession = await idp.token({ sid: 'x' });
    expect(await code(unaryCall((md, o, cb) => worker.raw.IssueToken({ taskId: task.taskId, subjectToken: otherSession }, md, o, cb)))).toBe('NOT_FOUND');
    expect(await code(get(await idp.token({ groups: ['payroll'] })))).toBe('OK');
    const denied = (await trail(task.taskId)).filter((e) => e.type === 'access.denied').map((e) => e.details.reason as string);
    expect(denied).toEqual([
      expect.stringMatching(/no subject_token/),
      expect.stringMatching(/another principal/),
      expect.stringMatching(/another session/),
      expect.stringMatching(/another session/),
    ]);
    // A task without bind_session is not bound: follow-ups need no subject token.
    const free = (await worker.createTask({ spec: report(), subjectToken })).task!;
    expect((await worker.getTask(free.taskId)).task!.taskId).toBe(free.taskId);
  });
});
