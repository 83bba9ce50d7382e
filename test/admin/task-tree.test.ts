/**
 * Delegation trees on the admin plane, over real mTLS on PostgreSQL and PGlite: GetTaskTree
 * (from any node, depth first, admins only, audited, bounded) and GetAuditTrail with tree
 * (every task's events in write order with their task, a check per chain, page tokens).
 *
 * The trees are made over gRPC DelegateTask under a policy whose rule has a delegation block
 * (to the tools namespace, at most 2 hops).
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { AdminClient } from '../../src/client/admin-client.js';
import { unaryCall, type BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import type { DelegateTaskResponse__Output } from '../../src/gen/taskbroker/v1/DelegateTaskResponse.js';
import type { GetAuditTrailResponse__Output } from '../../src/gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { GetTaskTreeResponse__Output } from '../../src/gen/taskbroker/v1/GetTaskTreeResponse.js';
import type { Task__Output } from '../../src/gen/taskbroker/v1/Task.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { MAX_TREE_TASKS } from '../../src/tasks/admin.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { ADMIN, policyOf } from '../helpers/policy.js';

const SQL_TOOL = 'spiffe://a.test/ns/tools/sa/sql';
const FETCH_TOOL = 'spiffe://a.test/ns/tools/sa/fetch';

const TREE_POLICY = `
version: 1
admins: [${ADMIN}]
rules:
  - name: agents
    callers: { trust_domains: [a.test] }
    actions: ["*"]
    audiences: ["spiffe://a.test/**"]
    scopes: ["*"]
    delegation:
      to: ["spiffe://a.test/ns/tools/**"]
      max_depth: 2
`;

function getTaskTree(client: AdminClient, taskId: string): Promise<GetTaskTreeResponse__Output> {
  return unaryCall((md, opts, cb) => client.raw.GetTaskTree({ taskId }, md, opts, cb));
}

function getTreeTrail(
  client: AdminClient,
  taskId: string,
  page: { pageSize?: number; pageToken?: string; afterSeq?: number } = {},
): Promise<GetAuditTrailResponse__Output> {
  return unaryCall((md, opts, cb) =>
    client.raw.GetAuditTrail({ taskId, tree: true, pageSize: page.pageSize ?? 0, pageToken: page.pageToken ?? '', afterSeq: page.afterSeq ?? 0 }, md, opts, cb),
  );
}

async function delegate(owner: BrokerClient, parentTaskId: string, delegatee: string, scopes: string[]): Promise<Task__Output> {
  const res = await unaryCall<DelegateTaskResponse__Output>((md, opts, cb) =>
    owner.raw.DelegateTask({ parentTaskId, delegatee, spec: { scopes } }, md, opts, cb),
  );
  if (!res.task) throw new Error('DelegateTask returned no task');
  return res.task;
}

describe.each(STORES)('delegation trees on the admin plane on %s', (kind) => {
  let t: TestBroker;
  let admin: AdminClient;
  let worker: BrokerClient;
  let sqlTool: BrokerClient;
  let fetchTool: BrokerClient;

  /** A → B → C: the worker's task A, delegated to the sql tool (B), which delegates to the fetch tool (C); a token on C, then on A. */
  async function threeTaskTree(): Promise<{ a: string; b: string; c: string }> {
    const { task } = await worker.createTask({
      spec: { action: 'report.build', resources: [], audience: API, scopes: ['read', 'write'], ttl: { seconds: 600 } },
    });
    const a = task!.taskId;
    const b = (await delegate(worker, a, SQL_TOOL, ['read', 'write'])).taskId;
    const c = (await delegate(sqlTool, b, FETCH_TOOL, ['read'])).taskId;
    await fetchTool.issueToken({ taskId: c });
    await worker.issueToken({ taskId: a });
    return { a, b, c };
  }

  beforeAll(async () => {
    t = await startTestBroker(kind, { policy: new StaticPolicySource(policyOf(TREE_POLICY)) });
    [admin, worker, sqlTool, fetchTool] = await Promise.all([t.adminClient(ADMIN), t.client(WORKER), t.client(SQL_TOOL), t.client(FETCH_TOOL)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('GetTaskTree from any node returns the root, then every descendant depth first; the read is audited', async () => {
    const { a, b, c } = await threeTaskTree();
    // A second child of A, created after C: depth first puts it after B's subtree (breadth first would not).
    t.clock.advance(5); // strictly later than B, however fast the calls
    const d = (await delegate(worker, a, FETCH_TOOL, ['write'])).taskId;
    for (const from of [a, b, c, d]) {
      const tree = await getTaskTree(admin, from);
      expect(tree.rootTaskId, from).toBe(a);
      expect(
        tree.tasks.map((x) => x.taskId),
        from,
      ).toEqual([a, b, c, d]);
    }
    const { tasks } = await getTaskTree(admin, c);
    expect(tasks.map((x) => [x.parentTaskId, x.rootTaskId, x.depth])).toEqual([
      ['', '', 0],
      [a, a, 1],
      [b, a, 2],
      [a, a, 1],
    ]);
    expect(tasks.map((x) => x.ownerSpiffeId)).toEqual([WORKER, SQL_TOOL, FETCH_TOOL, FETCH_TOOL]);
    expect(tasks[2]?.delegators).toEqual([SQL_TOOL, WORKER]);
    expect(tasks[2]?.spec?.scopes).toEqual(['read']);
    expect(tasks.every((x) => x.state === 'TASK_STATE_ACTIVE')).toBe(true);

    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.filter((e) => e.type === 'admin.tree_read' && e.details.root_task_id === a).map((e) => [e.details.task_id, e.details.tasks])).toEqual([
      [a, 4],
      [b, 4],
      [c, 4],
      [d, 4],
      [c, 4],
    ]);

    // A task that was never delegated is a tree of one.
    const { task: lone } = await worker.createTask({ spec: { action: 'x', resources: [], audience: API, scopes: ['s'], ttl: { seconds: 60 } } });
    expect(await getTaskTree(admin, lone!.taskId)).toMatchObject({ rootTaskId: lone!.taskId, tasks: [{ taskId: lone!.taskId, depth: 0 }] });
    await expect(getTaskTree(admin, 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(getTaskTree(admin, 'nope')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('a non-admin gets PERMISSION_DENIED for the tree and for its trail, before the request is read, on the record', async () => {
    const { b } = await threeTaskTree();
    const intruder = await t.adminClient(SQL_TOOL); // owns B: still not an admin
    await expect(getTaskTree(intruder, b)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: 'GetTaskTree is for admins only' });
    await expect(getTaskTree(intruder, 'not a task id')).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    await expect(getTreeTrail(intruder, b)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: 'GetAuditTrail is for admins only' });
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${SQL_TOOL}`);
    const denied = trail.filter((e) => e.type === 'access.denied').map((e) => [e.details.operation, e.details.task_id, e.details.tree ?? false]);
    expect(denied).toEqual([
      ['GetTaskTree', b, false],
      ['GetTaskTree', 'not a task id', false],
      ['GetAuditTrail', b, true],
    ]);
  });

  it('GetAuditTrail with tree: every event of the three chains in write order, each with its task, and three ok chain checks', async () => {
    const { a, b, c } = await threeTaskTree();
    const res = await getTreeTrail(admin, c);
    expect(res.rootTaskId).toBe(a);
    expect(res.taskId).toBe(c);
    expect(res.nextPageToken).toBe('');
    expect(res.events.map((e) => [e.taskId, e.seq, e.eventType])).toEqual([
      [a, 1, 'task.created'],
      [a, 2, 'task.delegated'],
      [b, 1, 'task.created'],
      [b, 2, 'task.delegated'],
      [c, 1, 'task.created'],
      [c, 2, 'token.issued'],
      [a, 3, 'token.issued'],
    ]);
    expect(res.events[1]?.details?.fields?.child_task_id?.stringValue).toBe(b);
    expect(res.events[4]?.details?.fields?.parent_task_id?.stringValue).toBe(b);
    // Each chain still links within itself.
    expect(res.events[6]?.prevHash).toBe(res.events[1]?.hash);
    expect(res.chains).toEqual([
      { taskId: a, chain: { ok: true, events: 3, brokenAt: 0, problem: '' } },
      { taskId: b, chain: { ok: true, events: 2, brokenAt: 0, problem: '' } },
      { taskId: c, chain: { ok: true, events: 2, brokenAt: 0, problem: '' } },
    ]);
    expect(res.chain).toEqual({ ok: true, events: 7, brokenAt: 0, problem: '' });

    // One task's trail names its task on every event too, and has no tree fields.
    const one = await admin.getAuditTrail(b);
    expect(one.events.map((e) => e.taskId)).toEqual([b, b]);
    expect(one).toMatchObject({ rootTaskId: '', chains: [], nextPageToken: '' });

    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.at(-2)).toMatchObject({ type: 'admin.audit_read', details: { task_id: c, tree: true, root_task_id: a, tasks: 3, chain_ok: true, events: 7 } });
  });

  it('tree pages go by page_token: page_size 2 walks every event exactly once, in order; wrong tokens are refused', async () => {
    const { a, b } = await threeTaskTree();
    const whole = await getTreeTrail(admin, a);
    expect(whole.events).toHaveLength(7);
    const seen: Array<[string, number]> = [];
    let pageToken = '';
    let pages = 0;
    do {
      const page = await getTreeTrail(admin, b, { pageSize: 2, pageToken });
      expect(page.events.length).toBeLessThanOrEqual(2);
      expect(page.chain).toMatchObject({ ok: true, events: 7 });
      expect(page.chains).toHaveLength(3);
      seen.push(...page.events.map((e): [string, number] => [e.taskId, e.seq]));
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken && pages < 10);
    expect(pages).toBe(4);
    expect(seen).toEqual(whole.events.map((e) => [e.taskId, e.seq]));

    const first = await getTreeTrail(admin, a, { pageSize: 2 });
    const other = await threeTaskTree();
    // A token of one tree's trail is not one of another's; nor is garbage; after_seq is for one task's trail.
    await expect(getTreeTrail(admin, other.a, { pageToken: first.nextPageToken })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(getTreeTrail(admin, a, { pageToken: 'garbage' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(getTreeTrail(admin, a, { afterSeq: 1 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(getTreeTrail(admin, a, { pageSize: 1001 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unaryCall((md, opts, cb) => admin.raw.GetAuditTrail({ taskId: a, pageToken: first.nextPageToken }, md, opts, cb))).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
    });
    await expect(getTreeTrail(admin, 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('a tampered chain anywhere in the tree fails the tree check, which names the broken task', async () => {
    const { a, b, c } = await threeTaskTree();
    await t.broker.store.db
      .updateTable('audit_events')
      .set({ actor_spiffe_id: 'spiffe://a.test/someone' })
      .where('chain_id', '=', c)
      .where('seq', '=', 2)
      .execute();
    const res = await getTreeTrail(admin, a);
    expect(res.chains.map((x) => [x.taskId, x.chain?.ok])).toEqual([
      [a, true],
      [b, true],
      [c, false],
    ]);
    expect(res.chains[2]?.chain).toMatchObject({ brokenAt: 2, problem: expect.stringMatching(/altered/) });
    expect(res.chain).toMatchObject({ ok: false, events: 7, brokenAt: 2, problem: expect.stringContaining(`task ${c}: `) });
  });

  it(`a tree of more than ${MAX_TREE_TASKS} tasks is refused with FAILED_PRECONDITION; one of exactly ${MAX_TREE_TASKS} is returned whole`, async () => {
    const { a } = await threeTaskTree();
    const db = t.broker.store.db;
    // Copies of A as its children, straight into the table: 3 + 9,998 = 10,001 tasks.
    await sql`insert into tasks select r.* from tasks t, generate_series(1, ${MAX_TREE_TASKS - 2}) g,
      lateral jsonb_populate_record(null::tasks, to_jsonb(t) || jsonb_build_object(
        'task_id', 'tsk_bulk' || lpad(g::text, 20, '0'), 'parent_task_id', t.task_id, 'root_task_id', t.task_id, 'depth', 1, 'idempotency_key', null)) r
      where t.task_id = ${a}`.execute(db);
    await expect(getTaskTree(admin, a)).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: `the delegation tree of ${a} has more than ${MAX_TREE_TASKS} tasks: too many to return at once`,
    });
    await expect(getTreeTrail(admin, a)).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });

    await db
      .deleteFrom('tasks')
      .where('task_id', '=', `tsk_bulk${'1'.padStart(20, '0')}`)
      .execute();
    // 10,000 tasks are more than grpc-js's default 4 MiB a client receives: this client takes more.
    const big = new AdminClient({
      address: t.address,
      credentials: svidChannelCredentials({ ...t.svidOf(ADMIN), bundle: t.a.root.pem, serverId: BROKER_ID }),
      channelOptions: { ...svidChannelOptions(), 'grpc.max_receive_message_length': 64 * 1024 * 1024 },
    });
    try {
      const tree = await getTaskTree(big, a);
      expect(tree.tasks).toHaveLength(MAX_TREE_TASKS);
      expect(tree.tasks[0]?.taskId).toBe(a);
      expect(new Set(tree.tasks.map((x) => x.taskId)).size).toBe(MAX_TREE_TASKS);
    } finally {
      big.close();
    }
  });
});
