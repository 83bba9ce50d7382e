/**
 * Request-time policy over real mTLS on PostgreSQL and PGlite: default deny, each rule field,
 * the rule named in the audit trail, a policy reload that takes effect for an existing task,
 * and the approval flow (self-approval refused).
 */
import * as grpc from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { TaskSpec } from '../../src/gen/taskbroker/v1/TaskSpec.js';
import { silentLogger } from '../../src/observability/logger.js';
import { FilePolicySource, StaticPolicySource } from '../../src/policy/policy-source.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { ADMIN, policyOf, SECOND_ADMIN } from '../helpers/policy.js';

const REPORTS = 'spiffe://a.test/ns/reports/sa/api';
const PARTNER = 'spiffe://b.test/ns/jobs/sa/reporter';
const CI = 'spiffe://a.test/ns/ci/sa/deployer';

const POLICY = `
version: 1
admins: [${ADMIN}, ${SECOND_ADMIN}]
rules:
  - name: billing-export
    callers:
      spiffe_ids: ["spiffe://a.test/ns/*/sa/worker"]
    actions: [invoice.export]
    audiences: ["spiffe://a.test/ns/billing/sa/**"]
    scopes: [invoices:read, invoices:list]
    max_task_ttl: 10m
    max_token_ttl: 60s
  - name: partner-reports
    callers:
      trust_domains: [b.test]
    actions: [report.read]
    audiences: [${REPORTS}]
    scopes: [reports:read]
    require_approval: true
  - name: ci-anything
    callers:
      spiffe_ids: [${CI}]
    actions: ["*"]
    audiences: ["spiffe://a.test/ns/staging/**"]
    scopes: ["*"]
  - name: admins-need-approval
    callers:
      spiffe_ids: ["spiffe://a.test/ns/platform/sa/*"]
    actions: [break.glass]
    audiences: [${API}]
    scopes: [all]
    require_approval: true
`;

function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return { action: 'invoice.export', resources: [], audience: API, scopes: ['invoices:read'], ttl: { seconds: 300 }, ...overrides };
}

describe.each(STORES)('request-time policy on %s', (kind) => {
  let t: TestBroker;
  let dir: string;
  let policyFile: string;
  let source: FilePolicySource;
  let worker: BrokerClient;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tb-policy-'));
    policyFile = join(dir, 'policy.yaml');
    await writeFile(policyFile, POLICY);
    source = await FilePolicySource.load(policyFile, { logger: silentLogger(), pollIntervalMs: 50 });
    t = await startTestBroker(kind, { policy: source });
    worker = await t.client(WORKER);
  });
  afterAll(async () => {
    await t?.close();
    source?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Writes the file and has the source check it now: resolves once the new policy is in force (the watcher is tested in policy-source.test.ts). */
  async function reloadPolicy(text: string): Promise<void> {
    const before = source.current().digest;
    await writeFile(policyFile, text);
    await source.reload();
    if (source.current().digest === before) throw new Error('policy was not reloaded');
  }

  it('allows what a rule allows, names the rule, and caps the token ttl', async () => {
    const { task } = await worker.createTask({ spec: spec({ ttl: { seconds: 600 } }) });
    expect(task).toMatchObject({ state: 'TASK_STATE_ACTIVE', policyRule: 'billing-export' });
    const issued = await worker.issueToken({ taskId: task!.taskId, ttl: { seconds: 900 } });
    const claims = decodeJwt(issued.token);
    expect(claims.exp! - claims.iat!).toBe(60); // max_token_ttl of the rule
    const trail = await verifyTaskTrail(t.broker.store.db, task!.taskId);
    expect(trail.trail[0]?.details).toMatchObject({ policy_rule: 'billing-export', policy_digest: source.current().digest });
    expect(trail.trail[1]?.details).toMatchObject({ policy_rule: 'billing-export' });
  });

  it.each([
    ['an action the rule does not list', spec({ action: 'invoice.delete' }), /action "invoice.delete" is not allowed/],
    [
      'an audience outside the rule',
      spec({ audience: 'spiffe://a.test/ns/payroll/sa/api' }),
      /audience spiffe:\/\/a.test\/ns\/payroll\/sa\/api is not allowed/,
    ],
    ['a scope outside the rule', spec({ scopes: ['invoices:read', 'invoices:write'] }), /invoices:write/],
    ['a task ttl over max_task_ttl', spec({ ttl: { seconds: 3600 } }), /ttl/],
  ])('denies %s with PERMISSION_DENIED and audits it', async (_label, request, reason) => {
    await expect(worker.createTask({ spec: request })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(reason) });
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${WORKER}`);
    expect(trail.at(-1)).toMatchObject({ type: 'access.denied', details: { operation: 'CreateTask', reason: expect.stringMatching(reason) } });
  });

  it('denies a caller no rule matches (default deny), by exact ID, pattern and trust domain', async () => {
    const nobody = await t.client('spiffe://a.test/ns/demo/sa/nobody');
    await expect(nobody.createTask({ spec: spec() })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: expect.stringMatching(/no rule matches caller/),
    });
    // Matched by pattern (ns/*/sa/worker) in another namespace:
    const otherWorker = await t.client('spiffe://a.test/ns/other/sa/worker');
    expect((await otherWorker.createTask({ spec: spec() })).task?.policyRule).toBe('billing-export');
    // Matched by exact ID, with actions ["*"] and scopes ["*"]:
    const ci = await t.client(CI);
    expect(
      (await ci.createTask({ spec: spec({ action: 'deploy.anything', audience: 'spiffe://a.test/ns/staging/sa/web', scopes: ['x', 'y'] }) })).task?.policyRule,
    ).toBe('ci-anything');
    // Matched by trust domain:
    const partner = await t.client(PARTNER);
    expect((await partner.createTask({ spec: spec({ action: 'report.read', audience: REPORTS, scopes: ['reports:read'] }) })).task?.policyRule).toBe(
      'partner-reports',
    );
  });

  it('no policy at all denies everything', async () => {
    const bare = await startTestBroker(kind, { policy: new StaticPolicySource(undefined) });
    try {
      const w = await bare.client(WORKER);
      await expect(w.createTask({ spec: spec() })).rejects.toMatchObject({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringMatching(/no policy is loaded/),
      });
      const admin = await bare.adminClient(ADMIN);
      await expect(admin.listTasks({})).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    } finally {
      await bare.close();
    }
  });

  it('a reloaded policy takes effect for an existing task: IssueToken is refused and audited', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    await worker.issueToken({ taskId: task!.taskId });
    await reloadPolicy(POLICY.replace('actions: [invoice.export]', 'actions: [invoice.view]'));
    try {
      await expect(worker.issueToken({ taskId: task!.taskId })).rejects.toMatchObject({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringMatching(/invoice.export/),
      });
      await expect(worker.getTask(task!.taskId)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      // Ending the task is always allowed: it only takes capability away.
      const trail = await verifyTaskTrail(t.broker.store.db, task!.taskId);
      expect(trail.trail.map((e) => e.type)).toEqual(['task.created', 'token.issued', 'access.denied', 'access.denied']);
      expect(trail.trail[2]).toMatchObject({ actorSpiffeId: WORKER, details: { operation: 'IssueToken', reason: expect.stringMatching(/^policy: /) } });
      expect(trail.trail[2]?.details.policy_digest).toBe(source.current().digest);
    } finally {
      await reloadPolicy(POLICY);
    }
    expect((await worker.issueToken({ taskId: task!.taskId })).token).toBeTruthy();
    await worker.cancelTask(task!.taskId, 'done');
  });

  it('a rule that starts requiring approval stops tokens for its existing unapproved tasks', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    await worker.issueToken({ taskId: task!.taskId });
    await reloadPolicy(POLICY.replace('    max_token_ttl: 60s\n', '    max_token_ttl: 60s\n    require_approval: true\n'));
    try {
      await expect(worker.issueToken({ taskId: task!.taskId })).rejects.toMatchObject({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringMatching(/now requires approval/),
      });
    } finally {
      await reloadPolicy(POLICY);
    }
  });

  it('a broken policy file keeps the last good policy', async () => {
    const digest = source.current().digest;
    await writeFile(policyFile, 'version: 1\nrules:\n  - name: x\n    bogus: true\n');
    await source.reload(); // resolves once the broken file has been read and refused
    expect(source.current().digest).toBe(digest);
    expect((await worker.createTask({ spec: spec() })).task?.state).toBe('TASK_STATE_ACTIVE');
    await reloadPolicy(POLICY + '\n# touched\n');
  });

  describe('approval', () => {
    it('a task whose rule requires approval waits in PENDING_APPROVAL; an admin approves; the trail shows who approved and who used it', async () => {
      const partner = await t.client(PARTNER);
      const { task } = await partner.createTask({ spec: spec({ action: 'report.read', audience: REPORTS, scopes: ['reports:read'] }) });
      expect(task?.state).toBe('TASK_STATE_PENDING_APPROVAL');
      await expect(partner.issueToken({ taskId: task!.taskId })).rejects.toMatchObject({
        code: grpc.status.FAILED_PRECONDITION,
        details: expect.stringMatching(/PENDING_APPROVAL/),
      });

      const admin = await t.adminClient(ADMIN);
      const approved = await admin.approveTask(task!.taskId, 'ticket OPS-42');
      expect(approved.task).toMatchObject({ state: 'TASK_STATE_ACTIVE', approvedBy: ADMIN, approvalComment: 'ticket OPS-42' });
      const issued = await partner.issueToken({ taskId: task!.taskId });
      expect(decodeJwt(issued.token).sub).toBe(PARTNER);
      await expect(admin.approveTask(task!.taskId, 'again')).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });

      const { trail } = await verifyTaskTrail(t.broker.store.db, task!.taskId);
      expect(trail.map((e) => [e.type, e.actorSpiffeId])).toEqual([
        ['task.created', PARTNER],
        ['access.denied', PARTNER],
        ['task.approved', ADMIN],
        ['token.issued', PARTNER],
      ]);
      expect(trail[2]?.details).toMatchObject({ approver: ADMIN, comment: 'ticket OPS-42', owner: PARTNER });
    });

    it('an approver cannot approve their own task; another admin can; a non-admin cannot', async () => {
      const mine = await t.client(ADMIN);
      const { task } = await mine.createTask({ spec: spec({ action: 'break.glass', scopes: ['all'] }) });
      expect(task?.state).toBe('TASK_STATE_PENDING_APPROVAL');
      const self = await t.adminClient(ADMIN);
      await expect(self.approveTask(task!.taskId, 'me')).rejects.toMatchObject({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringMatching(/own task/),
      });
      const notAdmin = await t.adminClient(WORKER);
      await expect(notAdmin.approveTask(task!.taskId, 'me too')).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      const other = await t.adminClient(SECOND_ADMIN);
      expect((await other.approveTask(task!.taskId, 'pairing')).task).toMatchObject({ state: 'TASK_STATE_ACTIVE', approvedBy: SECOND_ADMIN });
      const { trail } = await verifyTaskTrail(t.broker.store.db, task!.taskId);
      expect(trail.map((e) => e.type)).toEqual(['task.created', 'access.denied', 'task.approved']);
    });

    it('a pending task can be cancelled by its owner', async () => {
      const partner = await t.client(PARTNER);
      const { task } = await partner.createTask({ spec: spec({ action: 'report.read', audience: REPORTS, scopes: ['reports:read'] }) });
      expect((await partner.cancelTask(task!.taskId, 'not needed')).task?.state).toBe('TASK_STATE_CANCELLED');
    });
  });

  it('policyOf refuses what the broker would refuse to load', () => {
    expect(() => policyOf('version: 2\nrules: []\n')).toThrow(/version/);
  });
});
