/**
 * GetTask and RevokeWorkload's dry run on the admin plane, over real mTLS on PostgreSQL and
 * PGlite: one task with its history read from its audit trail (created, approved, ended; a
 * delegated task's parent), its token counts and chain check, an expiry found by the read, the
 * read on the admin's record; and a dry run that changes nothing (tasks stay ACTIVE, tokens stay
 * VALID) but counts what a real revoke then revokes, audited as a dry run.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { AdminClient } from '../../src/client/admin-client.js';
import { unaryCall, type BrokerClient } from '../../src/client/broker-client.js';
import type { DelegateTaskResponse__Output } from '../../src/gen/taskbroker/v1/DelegateTaskResponse.js';
import type { TaskSpec } from '../../src/gen/taskbroker/v1/TaskSpec.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { ADMIN, policyOf } from '../helpers/policy.js';

const TOOL = 'spiffe://a.test/ns/tools/sa/fetch';
const JOB_A = 'spiffe://a.test/ns/batch/sa/job-a';
const JOB_B = 'spiffe://a.test/ns/batch/sa/job-b';
const UNKNOWN_TASK = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';

// The approval rule first: the first rule that allows a request wins.
const POLICY = `
version: 1
admins: [${ADMIN}]
rules:
  - name: approval
    callers: { trust_domains: [a.test] }
    actions: ["needs.approval"]
    audiences: ["spiffe://a.test/**"]
    scopes: ["*"]
    require_approval: true
    delegation:
      to: ["spiffe://a.test/ns/tools/**"]
      max_depth: 1
  - name: everything
    callers: { trust_domains: [a.test] }
    actions: ["*"]
    audiences: ["spiffe://a.test/**"]
    scopes: ["*"]
    delegation:
      to: ["spiffe://a.test/ns/tools/**"]
      max_depth: 2
`;

const spec = (overrides: Partial<TaskSpec> = {}): TaskSpec => ({
  action: 'job.run',
  resources: [],
  audience: API,
  scopes: ['s'],
  ttl: { seconds: 600 },
  ...overrides,
});

async function delegate(owner: BrokerClient, parentTaskId: string, delegatee: string): Promise<string> {
  const res = await unaryCall<DelegateTaskResponse__Output>((md, opts, cb) =>
    owner.raw.DelegateTask({ parentTaskId, delegatee, spec: { scopes: ['s'] } }, md, opts, cb),
  );
  if (!res.task) throw new Error('DelegateTask returned no task');
  return res.task.taskId;
}

describe.each(STORES)('GetTask and RevokeWorkload --dry-run on %s', (kind) => {
  let t: TestBroker;
  let admin: AdminClient;
  let worker: BrokerClient;
  let tool: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, { policy: new StaticPolicySource(policyOf(POLICY)) });
    [admin, worker, tool, api] = await Promise.all([t.adminClient(ADMIN), t.client(WORKER), t.client(TOOL), t.client(API)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('GetTask returns the task, its state changes, its token counts and its chain check; the read is on the admin record', async () => {
    const { task } = await worker.createTask({ spec: spec({ action: 'needs.approval' }) });
    const taskId = task!.taskId;
    await admin.approveTask(taskId, 'ticket OPS-9');
    await worker.issueToken({ taskId });
    await worker.issueToken({ taskId });
    const child = await delegate(worker, taskId, TOOL);
    await tool.issueToken({ taskId: child });

    const live = await admin.getTask(taskId);
    expect(live.task).toMatchObject({ taskId, state: 'TASK_STATE_ACTIVE', ownerSpiffeId: WORKER, approvedBy: ADMIN, approvalComment: 'ticket OPS-9' });
    expect(live.history.map((h) => [h.state, h.event, h.by, h.reason, h.seq])).toEqual([
      ['TASK_STATE_PENDING_APPROVAL', 'task.created', WORKER, '', 1],
      ['TASK_STATE_ACTIVE', 'task.approved', ADMIN, 'ticket OPS-9', 2],
    ]);
    const workerThumbprint = (await worker.whoAmI()).certThumbprint;
    expect(live.history[0]?.byCertThumbprint).toBe(workerThumbprint);
    expect(live.history[0]?.at).not.toBeNull();
    expect(live).toMatchObject({ tokensIssued: 2, liveTokens: 2, delegatedTasks: 1, ownerCertThumbprint: workerThumbprint });
    expect(live.chain).toEqual({ ok: true, events: 5, brokenAt: 0, problem: '' });

    await admin.revokeTask(taskId, 'incident 12');
    const ended = await admin.getTask(taskId);
    expect(ended.task?.state).toBe('TASK_STATE_REVOKED');
    expect(ended.history.at(-1)).toMatchObject({ state: 'TASK_STATE_REVOKED', event: 'task.revoked', by: ADMIN, reason: 'incident 12' });
    expect(ended).toMatchObject({ tokensIssued: 2, liveTokens: 0, delegatedTasks: 1 });

    // The delegated task names its parent, and ended with it.
    const below = await admin.getTask(child);
    expect(below.history.map((h) => [h.state, h.event, h.by])).toEqual([
      ['TASK_STATE_ACTIVE', 'task.created', WORKER],
      ['TASK_STATE_REVOKED', 'task.revoked', ADMIN],
    ]);
    expect(below.history[0]?.reason).toBe(`delegated from ${taskId}`);
    expect(below.history[1]?.reason).toMatch(new RegExp(`^task ${taskId} was revoked`));
    // Its delegator created it: no certificate of its owner's went with the creation.
    expect(below).toMatchObject({ tokensIssued: 1, liveTokens: 0, delegatedTasks: 0, ownerCertThumbprint: '' });

    // The reads are on the admin's record, not on the task's chain.
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.filter((e) => e.type === 'admin.task_read').map((e) => [e.details.task_id, e.details.state, e.details.chain_ok])).toEqual([
      [taskId, 'ACTIVE', true],
      [taskId, 'REVOKED', true],
      [child, 'REVOKED', true],
    ]);
    const taskTrail = await verifyTaskTrail(t.broker.store.db, taskId);
    expect(taskTrail.trail.some((e) => e.type.startsWith('admin.'))).toBe(false);
  });

  it('GetTask of a task past its ttl finds it EXPIRED (the broker ended it); unknown is NOT_FOUND, malformed INVALID_ARGUMENT, a non-admin PERMISSION_DENIED', async () => {
    const { task } = await worker.createTask({ spec: spec({ ttl: { seconds: 30 } }) });
    t.clock.advance(31_000);
    const res = await admin.getTask(task!.taskId);
    expect(res.task?.state).toBe('TASK_STATE_EXPIRED');
    expect(res.history.map((h) => [h.state, h.event])).toEqual([
      ['TASK_STATE_ACTIVE', 'task.created'],
      ['TASK_STATE_EXPIRED', 'task.expired'],
    ]);
    expect(res.history[1]).toMatchObject({ by: BROKER_ID, byCertThumbprint: '', reason: 'task ttl elapsed' });

    await expect(admin.getTask(UNKNOWN_TASK)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND, details: 'task not found' });
    await expect(admin.getTask('nope')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(admin.getTask('')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const intruder = await t.adminClient(WORKER);
    await expect(intruder.getTask(task!.taskId)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: 'GetTask is for admins only' });
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${WORKER}`);
    expect(trail.filter((e) => e.type === 'access.denied' && e.details.operation === 'GetTask').map((e) => e.details.task_id)).toEqual([task!.taskId]);
  });

  it('RevokeWorkload with dry_run changes nothing, counts what a real call then revokes, and is audited as a dry run', async () => {
    const [jobA, jobB] = await Promise.all([t.client(JOB_A), t.client(JOB_B)]);
    const a1 = (await jobA.createTask({ spec: spec() })).task!.taskId;
    const a2 = (await jobA.createTask({ spec: spec() })).task!.taskId;
    const b1 = (await jobB.createTask({ spec: spec() })).task!.taskId;
    // A token that expires before the dry run: not live, but still revoked with its task.
    await jobA.issueToken({ taskId: a2, ttl: { seconds: 60 } });
    // A task delegated to a workload the selector does not match: it ends with its parent.
    const delegated = await delegate(jobB, b1, TOOL);
    t.clock.advance(61_000);
    const tokens = [
      { client: jobA, token: (await jobA.issueToken({ taskId: a1 })).token },
      { client: jobB, token: (await jobB.issueToken({ taskId: b1 })).token },
      { client: tool, token: (await tool.issueToken({ taskId: delegated })).token },
    ];
    const presenters = await Promise.all(tokens.map(async ({ client }) => (await client.whoAmI()).certThumbprint));

    const dry = await admin.revokeWorkload('spiffe://a.test/ns/batch/**', 'incident 8', { dryRun: true });
    expect(dry).toMatchObject({ dryRun: true, revokedTasks: 3, revokedTokens: 4, liveTokens: 3, descendantTasks: 1 });
    expect([...dry.taskIds].sort()).toEqual([a1, a2, b1].sort());

    // Nothing changed: every task ACTIVE, every token VALID, no task.revoked anywhere.
    for (const [owner, id] of [
      [jobA, a1],
      [jobA, a2],
      [jobB, b1],
      [tool, delegated],
    ] as const) {
      expect((await owner.getTask(id)).task?.state, id).toBe('TASK_STATE_ACTIVE');
      expect((await verifyTaskTrail(t.broker.store.db, id)).trail.some((e) => e.type === 'task.revoked')).toBe(false);
    }
    for (const [i, { token }] of tokens.entries()) {
      expect(await api.verifyToken({ token, presenterCertThumbprint: presenters[i]! })).toMatchObject({ valid: true });
    }
    const dryEvents = (await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`)).trail.filter((e) => e.details.selector === 'spiffe://a.test/ns/batch/**');
    expect(dryEvents.map((e) => e.type)).toEqual(['admin.workload_revoke_dry_run']);
    expect(dryEvents[0]?.details).toMatchObject({
      dry_run: true,
      reason: 'incident 8',
      revoked_tasks: 3,
      revoked_tokens: 4,
      live_tokens: 3,
      descendant_tasks: 1,
    });

    // The real call revokes what the dry run counted.
    const real = await admin.revokeWorkload('spiffe://a.test/ns/batch/**', 'incident 8');
    expect(real).toMatchObject({ dryRun: false, revokedTasks: 3, revokedTokens: 4 });
    expect([...real.taskIds].sort()).toEqual([...dry.taskIds].sort());
    expect((await tool.getTask(delegated)).task?.state).toBe('TASK_STATE_REVOKED');
    for (const [i, { token }] of tokens.entries()) {
      expect(await api.verifyToken({ token, presenterCertThumbprint: presenters[i]! })).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED' });
    }

    // A dry run needs an admin as much as the real call, and checks the selector the same way.
    const intruder = await t.adminClient(WORKER);
    await expect(intruder.revokeWorkload('spiffe://a.test/**', 'x', { dryRun: true })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    await expect(admin.revokeWorkload('spiffe://*.test/**', 'x', { dryRun: true })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect(await admin.revokeWorkload('spiffe://a.test/ns/batch/**', '', { dryRun: true })).toMatchObject({
      dryRun: true,
      revokedTasks: 0,
      revokedTokens: 0,
      taskIds: [],
    });
  });
});
