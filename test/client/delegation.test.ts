/**
 * The workload SDK's issue 12 calls against a real broker over mTLS: delegateTask round trip
 * (the child owned by the delegatee, narrower, with its chain; a replay by idempotency key; the
 * typed refusals of a widening, of a delegatee the rule does not name and of a stranger), the
 * child's use-limited token with its act and parent claims, the cascade when the parent ends, and
 * the subject token reaching the broker.
 */
import { describe, expect, it } from 'vitest';
import {
  connectTaskBroker,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  TaskBrokerError,
  type TaskBrokerClient,
} from '../../src/client/index.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { cleanupsAfterEach, type Cleanups } from '../helpers/cleanup.js';
import { policyOf } from '../helpers/policy.js';
import type { TrustDomainPki } from '../helpers/pki.js';
import { agentFor, API_ID, BROKER_ID, startBroker, WORKER_ID } from './fixture.js';

const cleanups = cleanupsAfterEach();

const TOOL_ID = 'spiffe://a.test/ns/tools/sa/sql';
const OUTSIDER_ID = 'spiffe://a.test/ns/demo/sa/outsider';

/** WORKER_ID may export invoices and hand reads (only) on to the tools namespace, one hop deep. */
const DELEGATION_POLICY = `
version: 1
rules:
  - name: exports
    callers:
      spiffe_ids: ["${WORKER_ID}"]
    actions: ["invoice.export"]
    audiences: ["${API_ID}"]
    scopes: ["invoices:read", "invoices:list"]
    delegation:
      to: ["spiffe://a.test/ns/tools/**"]
      max_depth: 1
      scopes: ["invoices:read"]
`;

const spec = { action: 'invoice.export', resources: ['invoices/2026/'], audience: API_ID, scopes: ['invoices:read', 'invoices:list'], ttlSeconds: 600 };

async function clientFor(c: Cleanups, pki: TrustDomainPki, address: string, spiffeId: string): Promise<TaskBrokerClient> {
  const { agent } = await agentFor(c, pki, spiffeId);
  const client = await connectTaskBroker({ address, serverId: BROKER_ID, workloadApi: { address: agent.address } });
  c.push(() => client.close());
  return client;
}

function claimsOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
}

describe('the workload SDK: delegation', () => {
  it('delegateTask hands a narrower child to the delegatee, which gets use-limited tokens naming the chain', async () => {
    const { pki, address } = await startBroker(cleanups, { policy: new StaticPolicySource(policyOf(DELEGATION_POLICY)) });
    const worker = await clientFor(cleanups, pki, address, WORKER_ID);
    const tool = await clientFor(cleanups, pki, address, TOOL_ID);
    const { task: parent } = await worker.createTask(spec);
    expect(parent).toMatchObject({ parentTaskId: null, rootTaskId: null, depth: 0, delegators: [], principal: null });

    const input = {
      parentTaskId: parent.taskId,
      delegatee: TOOL_ID,
      spec: { resources: ['invoices/2026/01.csv'], scopes: ['invoices:read'], params: { month: '2026-01' }, ttlSeconds: 300 },
      idempotencyKey: 'hand-january',
    };
    const delegated = await worker.delegateTask(input);
    expect(delegated.replayed).toBe(false);
    const child = delegated.task;
    expect(child).toMatchObject({
      ownerSpiffeId: TOOL_ID,
      state: 'ACTIVE',
      parentTaskId: parent.taskId,
      rootTaskId: parent.taskId,
      depth: 1,
      delegators: [WORKER_ID],
      // The action and the audience are the parent's.
      spec: {
        action: 'invoice.export',
        audience: API_ID,
        resources: ['invoices/2026/01.csv'],
        scopes: ['invoices:read'],
        params: { month: '2026-01' },
        ttlSeconds: 300,
      },
    });
    expect(child.taskId).not.toBe(parent.taskId);
    expect(JSON.parse(delegated.canonicalSpec)).toMatchObject({ parent_task_hash: parent.taskHash, scopes: ['invoices:read'] });
    // A retry with the same key is the same child.
    const again = await worker.delegateTask(input);
    expect(again).toMatchObject({ replayed: true, task: { taskId: child.taskId } });

    // The delegatee owns the child: it reads it and gets tokens for it; its tokens name the chain.
    expect(await tool.getTask(child.taskId)).toEqual(child);
    const issued = await tool.issueToken(child.taskId, { maxUses: 3, ttlSeconds: 60 });
    expect(claimsOf(issued.token)).toMatchObject({
      ver: 2,
      sub: TOOL_ID,
      task_id: child.taskId,
      parent_task_id: parent.taskId,
      act: { sub: WORKER_ID },
      max_uses: 3,
      scope: 'invoices:read',
    });
    expect(claimsOf((await tool.issueToken(child.taskId)).token)).not.toHaveProperty('max_uses');

    // Ending the parent ends the child with it.
    await worker.completeTask(parent.taskId, 'done');
    const ended = await tool.getTask(child.taskId);
    expect(ended.state).not.toBe('ACTIVE');
    expect(ended.endedAt).toBeInstanceOf(Date);
  });

  it('refuses a widening, a delegatee the rule does not name, and a stranger, with typed errors', async () => {
    const { pki, address } = await startBroker(cleanups, { policy: new StaticPolicySource(policyOf(DELEGATION_POLICY)) });
    const worker = await clientFor(cleanups, pki, address, WORKER_ID);
    const outsider = await clientFor(cleanups, pki, address, OUTSIDER_ID);
    const { task: parent } = await worker.createTask(spec);
    const parentTaskId = parent.taskId;

    // Scopes, resources or a lifetime beyond the parent's: a widening, named in the refusal.
    for (const wider of [{ scopes: ['invoices:delete'] }, { resources: ['payroll/2026/'] }, { ttlSeconds: 3600 }]) {
      const widened = await worker.delegateTask({ parentTaskId, delegatee: TOOL_ID, spec: wider }).catch((e: unknown) => e);
      expect(widened).toBeInstanceOf(TaskBrokerError);
      expect((widened as TaskBrokerError).details).toMatch(/widening refused/);
    }
    // Within the parent's, but not what the rule lets be handed on.
    await expect(worker.delegateTask({ parentTaskId, delegatee: TOOL_ID, spec: { scopes: ['invoices:list'] } })).rejects.toBeInstanceOf(PermissionDeniedError);
    // A delegatee outside delegation.to.
    await expect(worker.delegateTask({ parentTaskId, delegatee: OUTSIDER_ID, spec: { scopes: ['invoices:read'] } })).rejects.toBeInstanceOf(
      PermissionDeniedError,
    );
    // No delegatee: refused before anything is looked up.
    await expect(worker.delegateTask({ parentTaskId, delegatee: '' })).rejects.toBeInstanceOf(InvalidArgumentError);
    // Someone else's task is not found, as for any stranger.
    await expect(outsider.delegateTask({ parentTaskId, delegatee: TOOL_ID })).rejects.toBeInstanceOf(NotFoundError);
    // The parent is untouched by the refusals; a child inheriting everything but the scopes is allowed.
    const child = await worker.delegateTask({ parentTaskId, delegatee: TOOL_ID, spec: { scopes: ['invoices:read'] } });
    expect(child.task.spec).toMatchObject({ resources: ['invoices/2026/'], audience: API_ID, scopes: ['invoices:read'] });
    expect(child.task.spec.ttlSeconds).toBeLessThanOrEqual(600);
  });

  it('sends subjectToken with createTask: a policy without subject_issuers refuses it', async () => {
    const { pki, address } = await startBroker(cleanups, { policy: new StaticPolicySource(policyOf(DELEGATION_POLICY)) });
    const worker = await clientFor(cleanups, pki, address, WORKER_ID);
    const refused = await worker.createTask(spec, { subjectToken: 'eyJhbGciOiJFUzI1NiJ9.e30.c2ln' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(PermissionDeniedError);
    expect((refused as PermissionDeniedError).details).toMatch(/subject_issuers/);
    // Without it, the same spec is created.
    expect((await worker.createTask(spec)).task.principal).toBeNull();
  });
});
