/**
 * What the workload SDK puts on the wire for the calls of issue 12, without a broker: the
 * generated client's methods are replaced, so each test sees the exact request and answers it.
 * subjectToken reaches every task call, maxUses reaches IssueToken (and nonsense is refused before
 * anything is sent), delegateTask maps its spec (absent fields are the parent's), and the answer's
 * delegation fields come back as plain values.
 */
import type * as grpc from '@grpc/grpc-js';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { InvalidArgumentError, TaskBrokerClient } from '../../src/client/index.js';
import type { Task__Output } from '../../src/gen/taskbroker/v1/Task.js';
import type { X509Source } from '../../src/spiffe/x509-source.js';
import { brokerIdentity, bundleSet, trustDomainPki } from '../helpers/pki.js';

const WORKER = 'spiffe://a.test/ns/demo/sa/worker';
const TOOL = 'spiffe://a.test/ns/tools/sa/sql';
const API = 'spiffe://a.test/ns/billing/sa/invoice-api';
const SUBJECT_TOKEN = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln';

let source: X509Source;
beforeAll(async () => {
  const pki = await trustDomainPki('a.test');
  const identity = await brokerIdentity(pki, '/ns/demo/sa/worker');
  source = { current: () => identity, onChange: () => () => undefined, bundles: bundleSet(pki), close: () => undefined };
});

const clients: TaskBrokerClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  vi.restoreAllMocks();
});

function wireTask(overrides: Partial<Task__Output> = {}): Task__Output {
  return {
    taskId: 'tsk_child',
    ownerSpiffeId: TOOL,
    spec: {
      action: 'invoice.export',
      resources: ['invoices/2026/'],
      audience: API,
      scopes: ['invoices:read'],
      params: { fields: {} },
      ttl: { seconds: '300', nanos: 0 },
    },
    taskHash: 'hash',
    gateway: '',
    hasResult: false,
    resultFailed: false,
    state: 'TASK_STATE_ACTIVE',
    createdAt: { seconds: '1800000000', nanos: 0 },
    expiresAt: { seconds: '1800000300', nanos: 0 },
    endedAt: null,
    endedBy: '',
    endReason: '',
    approvedBy: '',
    approvedAt: null,
    approvalComment: '',
    policyRule: 'exports',
    parentTaskId: 'tsk_parent',
    rootTaskId: 'tsk_root',
    depth: 2,
    delegators: [WORKER, 'spiffe://a.test/ns/demo/sa/frontend'],
    principal: { issuer: 'https://idp.example', subject: 'alice', sessionId: 'sid-1' },
    approver: null,
    ...overrides,
  };
}

type Raw = TaskBrokerClient['rpc']['raw'];
type Method = 'CreateTask' | 'GetTask' | 'IssueToken' | 'CompleteTask' | 'CancelTask' | 'DelegateTask';

/** A client whose `method` records its requests and answers `response`. */
function clientAnswering(method: Method, response: object): { client: TaskBrokerClient; requests: unknown[] } {
  const client = new TaskBrokerClient({ address: '127.0.0.1:1', serverId: 'spiffe://a.test/task-broker', source, deadlineMs: 1_000 });
  clients.push(client);
  const requests: unknown[] = [];
  const fake = (request: unknown, _md: grpc.Metadata, _opts: grpc.CallOptions, callback: grpc.requestCallback<unknown>) => {
    requests.push(request);
    callback(null, response);
    return {} as grpc.ClientUnaryCall;
  };
  vi.spyOn(client.rpc.raw as Raw & Record<Method, unknown>, method).mockImplementation(fake as never);
  return { client, requests };
}

const spec = { action: 'invoice.export', audience: API, scopes: ['invoices:read'] };

describe('subjectToken on every task call', () => {
  it('createTask sends it (and an empty one without it)', async () => {
    const { client, requests } = clientAnswering('CreateTask', { task: wireTask(), canonicalSpec: '{}', replayed: false });
    await client.createTask({ ...spec, idempotencyKey: 'k' }, { subjectToken: SUBJECT_TOKEN });
    await client.createTask(spec);
    expect(requests).toMatchObject([
      { idempotencyKey: 'k', subjectToken: SUBJECT_TOKEN, spec: { action: 'invoice.export' } },
      { idempotencyKey: '', subjectToken: '' },
    ]);
  });

  it('getTask, completeTask and cancelTask send it with their own fields', async () => {
    const get = clientAnswering('GetTask', { task: wireTask() });
    await get.client.getTask('tsk_child', { subjectToken: SUBJECT_TOKEN });
    await get.client.getTask('tsk_child');
    expect(get.requests).toEqual([
      { taskId: 'tsk_child', subjectToken: SUBJECT_TOKEN, operation: 'TASK_OPERATION_POLL', onBehalfOf: null },
      { taskId: 'tsk_child', subjectToken: '', operation: 'TASK_OPERATION_POLL', onBehalfOf: null },
    ]);
    const complete = clientAnswering('CompleteTask', { task: wireTask({ state: 'TASK_STATE_COMPLETED' }), revokedTokens: 2 });
    expect(await complete.client.completeTask('tsk_child', 'done', { subjectToken: SUBJECT_TOKEN })).toMatchObject({
      revokedTokens: 2,
      task: { state: 'COMPLETED' },
    });
    expect(complete.requests).toEqual([{ taskId: 'tsk_child', outcome: 'done', subjectToken: SUBJECT_TOKEN, result: null }]);
    const cancel = clientAnswering('CancelTask', { task: wireTask({ state: 'TASK_STATE_CANCELLED' }), revokedTokens: 0 });
    await cancel.client.cancelTask('tsk_child', undefined, { subjectToken: SUBJECT_TOKEN });
    expect(cancel.requests).toEqual([{ taskId: 'tsk_child', reason: '', subjectToken: SUBJECT_TOKEN, onBehalfOf: null }]);
  });

  it('a gateway names its requester: a DER chain or a subject token, and a result read says so', async () => {
    const der = Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]);
    const get = clientAnswering('GetTask', { task: wireTask(), result: null, resultExpired: true });
    const read = await get.client.readTask('tsk_child', { operation: 'result', onBehalfOf: { x509SvidChain: [der] } });
    expect(read.resultExpired).toBe(true);
    expect(get.requests).toEqual([
      { taskId: 'tsk_child', subjectToken: '', operation: 'TASK_OPERATION_RESULT', onBehalfOf: { x509SvidChain: [der], subjectToken: '' } },
    ]);
    const complete = clientAnswering('CompleteTask', { task: wireTask({ state: 'TASK_STATE_COMPLETED' }), revokedTokens: 0 });
    await complete.client.completeTask('tsk_child', 'done', { result: { json: '{}' } });
    expect(complete.requests).toEqual([{ taskId: 'tsk_child', outcome: 'done', subjectToken: '', result: { json: '{}', failed: false } }]);
  });

  it('the low-level BrokerClient keeps its positional forms next to the request forms', async () => {
    const { client, requests } = clientAnswering('CompleteTask', { task: wireTask(), revokedTokens: 0 });
    await client.rpc.completeTask('tsk_a', 'positional');
    await client.rpc.completeTask({ taskId: 'tsk_b', outcome: 'request', subjectToken: SUBJECT_TOKEN }, { deadlineMs: 500 });
    expect(requests).toEqual([
      { taskId: 'tsk_a', outcome: 'positional' },
      { taskId: 'tsk_b', outcome: 'request', subjectToken: SUBJECT_TOKEN },
    ]);
  });
});

describe('issueToken', () => {
  const issued = { token: 'a.b.c', tokenId: 'tok_1', expiresAt: { seconds: '1800000060', nanos: 0 }, scopes: ['invoices:read'] };

  it('sends maxUses and subjectToken; no maxUses is 0 on the wire (no limit)', async () => {
    const { client, requests } = clientAnswering('IssueToken', issued);
    await client.issueToken('tsk_child', { maxUses: 2, subjectToken: SUBJECT_TOKEN, scopes: ['invoices:read'], ttlSeconds: 60 });
    await client.issueToken('tsk_child');
    expect(requests).toEqual([
      { taskId: 'tsk_child', scopes: ['invoices:read'], ttl: { seconds: '60', nanos: 0 }, maxUses: 2, subjectToken: SUBJECT_TOKEN },
      { taskId: 'tsk_child', scopes: [], ttl: null, maxUses: 0, subjectToken: '' },
    ]);
  });

  it.each([0, -1, 2.5, Number.NaN])('refuses maxUses %s before sending anything (0 on the wire would mean no limit)', async (maxUses) => {
    const { client, requests } = clientAnswering('IssueToken', issued);
    const refused = await client.issueToken('tsk_child', { maxUses }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(InvalidArgumentError);
    expect((refused as InvalidArgumentError).details).toMatch(/maxUses must be a whole number from 1/);
    expect(requests).toHaveLength(0);
  });
});

describe('delegateTask', () => {
  it('sends an absent spec as "all the parent\'s", and a given one field by field', async () => {
    const { client, requests } = clientAnswering('DelegateTask', { task: wireTask(), canonicalSpec: '{"parent_task_hash":"p"}', replayed: false });
    await client.delegateTask({ parentTaskId: 'tsk_parent', delegatee: TOOL });
    await client.delegateTask({
      parentTaskId: 'tsk_parent',
      delegatee: TOOL,
      spec: { resources: ['invoices/2026/01.csv'], scopes: ['invoices:read'], audience: API, params: { month: '2026-01' }, ttlSeconds: 120 },
      idempotencyKey: 'hand-1',
      subjectToken: SUBJECT_TOKEN,
    });
    expect(requests).toEqual([
      {
        parentTaskId: 'tsk_parent',
        delegatee: TOOL,
        spec: { resources: [], scopes: [], audience: '', params: null, ttl: null },
        idempotencyKey: '',
        subjectToken: '',
      },
      {
        parentTaskId: 'tsk_parent',
        delegatee: TOOL,
        spec: {
          resources: ['invoices/2026/01.csv'],
          scopes: ['invoices:read'],
          audience: API,
          params: { fields: { month: { kind: 'stringValue', stringValue: '2026-01' } } },
          ttl: { seconds: '120', nanos: 0 },
        },
        idempotencyKey: 'hand-1',
        subjectToken: SUBJECT_TOKEN,
      },
    ]);
  });

  it('returns the child with its chain and principal as plain values', async () => {
    const { client } = clientAnswering('DelegateTask', { task: wireTask(), canonicalSpec: '{"parent_task_hash":"p"}', replayed: true });
    const delegated = await client.delegateTask({ parentTaskId: 'tsk_parent', delegatee: TOOL });
    expect(delegated).toEqual({
      replayed: true,
      canonicalSpec: '{"parent_task_hash":"p"}',
      task: expect.objectContaining({
        taskId: 'tsk_child',
        ownerSpiffeId: TOOL,
        state: 'ACTIVE',
        parentTaskId: 'tsk_parent',
        rootTaskId: 'tsk_root',
        depth: 2,
        delegators: [WORKER, 'spiffe://a.test/ns/demo/sa/frontend'],
        principal: { iss: 'https://idp.example', sub: 'alice', sid: 'sid-1' },
        approver: null,
        expiresAt: new Date(1_800_000_300_000),
      }),
    });
    // A root task: no parent, no root, no principal.
    const root = clientAnswering('GetTask', { task: wireTask({ parentTaskId: '', rootTaskId: '', depth: 0, delegators: [], principal: null }) });
    expect(await root.client.getTask('tsk_root')).toMatchObject({ parentTaskId: null, rootTaskId: null, depth: 0, delegators: [], principal: null });
  });
});
