/**
 * MCP Tasks guarded by the broker, end to end: real SDK clients and server over real mTLS, a real
 * broker on each store. The creator's task requests are allowed and audited one by one; another
 * identity that knows the task ID hears "task not found" for everything (audited as denied); the
 * task's tokens die with it; tasks/list shows only the requester's own; without the broker every
 * task request fails closed.
 */
import * as grpc from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema, ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { argumentsSha256, type GuardBroker } from '../../src/mcp/index.js';
import type { StoreKind } from '../../src/store/database.js';
import { startTestBroker, type TestBroker } from '../helpers/broker.js';
import { MutablePolicySource, policyOf } from '../helpers/policy.js';
import { ALICE, BOB, MCP_POLICY, MCP_SERVER, startMcpFixture, TOOL, type McpFixture } from './fixture.js';

const STORES: StoreKind[] = ['postgres', 'pglite'];
const ADMIN = 'spiffe://a.test/ns/platform/sa/admin';
const APPROVAL_POLICY = MCP_POLICY.replace('result_retention: 1h', 'result_retention: 1h\n    require_approval: true');

/**
 * The real broker client, except that each CreateTask answer (the task committed at the broker)
 * is held back until `release` is called: a creation stays under way as long as the test wants.
 */
function holdingCreations(): { wrap: (broker: GuardBroker) => GuardBroker; created: Promise<string>; release: () => void } {
  let onCreated!: (taskId: string) => void;
  let release!: () => void;
  const created = new Promise<string>((resolve) => (onCreated = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  const wrap = (broker: GuardBroker): GuardBroker => ({
    createTask: async (spec, options) => {
      const answer = await broker.createTask(spec, options);
      onCreated(answer.task.taskId);
      await released;
      return answer;
    },
    readTask: (taskId, options) => broker.readTask(taskId, options),
    cancelTask: (taskId, reason, options) => broker.cancelTask(taskId, reason, options),
    completeTask: (taskId, outcome, options) => broker.completeTask(taskId, outcome, options),
    listOwnTasks: (options) => broker.listOwnTasks(options),
    issueToken: (taskId, options) => broker.issueToken(taskId, options),
  });
  return { wrap, created, release };
}

/** Calls the tool task-augmented and returns the created task's ID (the stream stops there). */
async function startTask(client: Client, title: string): Promise<string> {
  for await (const message of client.experimental.tasks.callToolStream({ name: TOOL, arguments: { title } }, undefined, { task: { ttl: 60_000 } })) {
    if (message.type === 'taskCreated') return message.task.taskId;
    if (message.type === 'error') throw message.error;
  }
  throw new Error('no task was created');
}

async function trailOf(t: TestBroker, chain: string): Promise<Array<{ type: string; actor: string; details: Record<string, unknown> }>> {
  const { ok, trail } = await verifyTaskTrail(t.broker.store.db, chain);
  expect(ok).toBe(true);
  return trail.map((e) => ({ type: e.type, actor: e.actorSpiffeId, details: e.details }));
}

const notFound = (taskId: string): unknown =>
  expect.objectContaining({ code: ErrorCode.InvalidParams, message: expect.stringContaining(`Task not found: ${taskId}`) });

describe.each(STORES)('MCP tasks guarded by the broker (%s)', (kind) => {
  let t: TestBroker;
  let policy: MutablePolicySource;
  let mcp: McpFixture;
  let alice: Client;
  let bob: Client;

  beforeAll(async () => {
    policy = new MutablePolicySource(policyOf(MCP_POLICY));
    t = await startTestBroker(kind, { policy });
    mcp = await startMcpFixture(t);
    [alice, bob] = await Promise.all([mcp.connect(ALICE), mcp.connect(BOB)]);
  }, 60_000);

  afterAll(async () => {
    await mcp?.close();
    await t?.close();
  });

  it('creates a broker task for the requester, lets it poll and fetch the result, each audited', async () => {
    const taskId = await startTask(alice, 'Q1');
    expect(taskId).toMatch(/^tsk_/);
    const work = await mcp.works.running(taskId);
    expect(work.authInfo?.clientId).toBe(ALICE);

    const working = await alice.experimental.tasks.getTask(taskId);
    expect(working).toMatchObject({ taskId, status: 'working', ttl: 60_000, pollInterval: 100 });
    expect(Date.parse(working.createdAt)).not.toBeNaN();

    // tasks/result blocks until the work ends.
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.finish(taskId, 'done');
    const result = await pending;
    expect(result.content).toEqual([{ type: 'text', text: 'Q1: done' }]);
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ taskId, status: 'completed' });
    expect((await alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)).content).toEqual(result.content);

    const trail = await trailOf(t, taskId);
    const types = trail.map((e) => e.type);
    expect(types[0]).toBe('task.created');
    expect(trail[0]?.details).toMatchObject({ action: TOOL, audience: MCP_SERVER });
    // The task's spec (and so its hash, and every token's) commits to the arguments' canonical hash.
    const row = await t.broker.store.db.selectFrom('tasks').select('spec').where('task_id', '=', taskId).executeTakeFirstOrThrow();
    expect(row.spec).toMatchObject({ params: { tool: TOOL, arguments_sha256: argumentsSha256({ title: 'Q1' }) } });
    expect(types).toEqual(expect.arrayContaining(['task.polled', 'task.result_read', 'token.issued', 'task.completed']));
    expect(types.filter((x) => x === 'task.result_read').length).toBeGreaterThanOrEqual(2);
    for (const e of trail.filter((x) => x.type === 'task.polled' || x.type === 'task.result_read')) expect(JSON.stringify(e.details)).toContain(ALICE);
    // The blocked tasks/result re-checked a bounded number of times, not in a loop.
    expect(types.length).toBeLessThan(20);
  });

  it('forwards a requester chain with an intermediate (leaf first, root left out)', async () => {
    const carol = await mcp.connect('spiffe://a.test/ns/agents/sa/carol', { viaIntermediate: true });
    const taskId = await startTask(carol, 'chained');
    expect((await mcp.works.running(taskId)).authInfo?.clientId).toBe('spiffe://a.test/ns/agents/sa/carol');
    expect(await carol.experimental.tasks.getTask(taskId)).toMatchObject({ taskId, status: 'working' });
    await expect(alice.experimental.tasks.getTask(taskId)).rejects.toEqual(notFound(taskId));
    await mcp.works.finish(taskId, 'ok');
    // The client opened more than one connection, each a full handshake presenting the whole chain
    // (a resumed session would present the leaf alone, which the broker cannot verify).
    const carols = mcp.connections.filter((c) => c.peer?.includes('sa/carol'));
    expect(carols.length).toBeGreaterThanOrEqual(2);
    expect(carols.filter((c) => c.resumed)).toEqual([]);
  });

  it("answers a task creation the policy refuses with the broker's refusal, and starts no work", async () => {
    const before = mcp.works.started.length;
    policy.set(policyOf(MCP_POLICY.replace(`gateways: ["${MCP_SERVER}"]`, 'gateways: ["spiffe://a.test/ns/mcp/sa/another-server"]')));
    try {
      await expect(startTask(alice, 'refused')).rejects.toMatchObject({
        code: ErrorCode.InvalidRequest,
        message: expect.stringMatching(/task broker denied the request/),
      });
    } finally {
      policy.set(policyOf(MCP_POLICY));
    }
    expect(mcp.works.started.length).toBe(before);
  });

  it('lets the creator cancel: the work is aborted, the task CANCELLED and audited', async () => {
    const taskId = await startTask(alice, 'to cancel');
    const work = await mcp.works.running(taskId);
    const aborted = new Promise((resolve) => work.signal.addEventListener('abort', () => resolve(work.signal.reason), { once: true }));
    expect(await alice.experimental.tasks.cancelTask(taskId)).toMatchObject({ taskId, status: 'cancelled' });
    expect(await aborted).toBe('cancelled');
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'cancelled' });
    await expect(alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)).rejects.toMatchObject({
      code: ErrorCode.InvalidParams,
      message: expect.stringMatching(/cancelled/),
    });
    const trail = await trailOf(t, taskId);
    const cancelled = trail.find((e) => e.type === 'task.cancelled');
    expect(cancelled).toBeDefined();
    expect(JSON.stringify(cancelled?.details)).toContain(ALICE);
  });

  it('answers another identity that knows the task ID "task not found" for get, result and cancel, each audited as denied', async () => {
    const taskId = await startTask(alice, 'secret');
    await mcp.works.running(taskId);
    const unknown = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';
    for (const id of [taskId, unknown]) {
      await expect(bob.experimental.tasks.getTask(id)).rejects.toEqual(notFound(id));
      await expect(bob.experimental.tasks.getTaskResult(id, CallToolResultSchema)).rejects.toEqual(notFound(id));
      await expect(bob.experimental.tasks.cancelTask(id)).rejects.toEqual(notFound(id));
    }
    // Still alive and Alice's.
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'working' });
    const denied = [...(await trailOf(t, taskId)), ...(await trailOf(t, `actor:${MCP_SERVER}`))].filter(
      (e) => e.type === 'access.denied' && JSON.stringify(e.details).includes(BOB) && JSON.stringify(e.details).includes(taskId),
    );
    expect(denied.length).toBeGreaterThanOrEqual(3);
    await mcp.works.finish(taskId, 'ok');
  });

  it("revokes the task's tokens when the work ends", async () => {
    const taskId = await startTask(alice, 'tokens');
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.finish(taskId, 'ok');
    await pending;
    const token = mcp.works.tokens.get(taskId);
    expect(token).toBeDefined();
    const audience = await t.client(MCP_SERVER);
    expect((await audience.verifyToken({ token: token! })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
  });

  it('ends a task whose work throws as failed, with the error as its result', async () => {
    const taskId = await startTask(alice, 'boom');
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.fail(taskId, 'disk full');
    expect(await pending).toMatchObject({ isError: true, content: [{ type: 'text', text: 'disk full' }] });
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'failed' });
  });

  it("lists only the requester's own tasks", async () => {
    const mine = await startTask(alice, 'listed');
    const bobs = await startTask(bob, 'bob');
    const aliceIds = (await alice.experimental.tasks.listTasks()).tasks.map((x) => x.taskId);
    const bobIds = (await bob.experimental.tasks.listTasks()).tasks.map((x) => x.taskId);
    expect(aliceIds).toContain(mine);
    expect(aliceIds).not.toContain(bobs);
    expect(bobIds).toEqual([bobs]);
    await Promise.all([mcp.works.finish(mine, 'ok'), mcp.works.finish(bobs, 'ok')]);
  });

  it("aborts the work when the task's ttl elapses, and reports the task failed", async () => {
    let taskId: string | undefined;
    for await (const message of alice.experimental.tasks.callToolStream({ name: TOOL, arguments: { title: 'slow' } }, undefined, { task: { ttl: 1_000 } })) {
      if (message.type === 'taskCreated') {
        taskId = message.task.taskId;
        break;
      }
    }
    const work = await mcp.works.running(taskId!);
    const reason = await new Promise((resolve) => work.signal.addEventListener('abort', () => resolve(work.signal.reason), { once: true }));
    expect(reason).toBe('expired');
    t.clock.advance(1_000); // past the broker's expiry even if its clock lags this process's timer
    expect(await alice.experimental.tasks.getTask(taskId!)).toMatchObject({ status: 'failed', statusMessage: 'task ttl elapsed' });
    await expect(alice.experimental.tasks.getTaskResult(taskId!, CallToolResultSchema)).rejects.toMatchObject({
      code: ErrorCode.InvalidParams,
      message: expect.stringMatching(/ttl elapsed; it has no result/),
    });
  });

  it('says a result is no longer available once its retention ended', async () => {
    // A short retention (the requester's certificate would not outlive an hour on the broker's clock).
    policy.set(policyOf(MCP_POLICY.replace('result_retention: 1h', 'result_retention: 1s')));
    const taskId = await startTask(alice, 'kept a second');
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.finish(taskId, 'ok');
    await pending;
    policy.set(policyOf(MCP_POLICY));
    t.clock.advance(2_000);
    await expect(alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)).rejects.toMatchObject({
      code: ErrorCode.InvalidParams,
      message: expect.stringMatching(/no longer available/),
    });
  });

  it('runs nothing before an approval the rule requires; the work starts once an admin approved', async () => {
    policy.set(policyOf(APPROVAL_POLICY));
    try {
      const before = mcp.works.started.length;
      const taskId = await startTask(alice, 'needs approval');
      expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ taskId, status: 'working', statusMessage: 'waiting for approval' });
      expect(mcp.works.started.length).toBe(before);
      expect(mcp.works.started.map((w) => w.taskId)).not.toContain(taskId);
      const admin = await t.adminClient(ADMIN);
      await admin.approveTask(taskId, 'looks fine');
      const work = await mcp.works.running(taskId);
      expect(work.task.taskId).toBe(taskId);
      const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
      await mcp.works.finish(taskId, 'approved and done');
      expect((await pending).content).toEqual([{ type: 'text', text: 'needs approval: approved and done' }]);
    } finally {
      policy.set(policyOf(MCP_POLICY));
    }
  });

  it('ends at the broker a task whose creation was under way when the guard closed; its work never starts', async () => {
    const held = holdingCreations();
    const own = await startMcpFixture(t, { wrapBroker: held.wrap });
    try {
      const client = await own.connect(ALICE);
      const creating = startTask(client, 'created while closing');
      const taskId = await held.created;
      const closing = own.guard.close(10_000);
      held.release();
      await closing;
      expect(await creating).toBe(taskId);
      expect(own.guard.runningWorks).toBe(0);
      expect(own.works.started.map((w) => w.taskId)).not.toContain(taskId);
      const admin = await t.adminClient(ADMIN);
      const { task, history } = await admin.getTask(taskId);
      expect(task).toMatchObject({ state: 'TASK_STATE_COMPLETED', resultFailed: true });
      expect(history.at(-1)).toMatchObject({ state: 'TASK_STATE_COMPLETED', event: 'task.completed', by: MCP_SERVER });
    } finally {
      held.release();
      await own.close();
    }
  });

  it('cancels at the broker a task still waiting for approval when the guard closes, so no later approval finds it', async () => {
    policy.set(policyOf(APPROVAL_POLICY));
    const own = await startMcpFixture(t);
    try {
      const client = await own.connect(ALICE);
      const taskId = await startTask(client, 'pending at shutdown');
      expect(own.guard.runningWorks).toBe(1);
      await own.guard.close(10_000);
      expect(own.guard.runningWorks).toBe(0);
      const admin = await t.adminClient(ADMIN);
      const { task, history } = await admin.getTask(taskId);
      expect(task?.state).toBe('TASK_STATE_CANCELLED');
      expect(history.at(-1)).toMatchObject({
        state: 'TASK_STATE_CANCELLED',
        event: 'task.cancelled',
        by: MCP_SERVER,
        reason: 'the MCP server shut down before approval',
      });
      const cancelled = (await trailOf(t, taskId)).find((e) => e.type === 'task.cancelled');
      expect(cancelled?.actor).toBe(MCP_SERVER);
      expect(JSON.stringify(cancelled?.details)).toContain('the MCP server shut down before approval');
      await expect(admin.approveTask(taskId, 'too late')).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
      expect(own.works.started).toHaveLength(0);
    } finally {
      policy.set(policyOf(MCP_POLICY));
      await own.close();
    }
  });

  it('ends a task whose result the broker cannot store as failed, saying why, instead of leaving the requester waiting', async () => {
    const taskId = await startTask(alice, 'huge');
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.finish(taskId, 'x'.repeat(600 * 1024));
    const result = await pending;
    expect(result.isError).toBe(true);
    expect(JSON.stringify(result.content)).toMatch(/could not be stored: .*result\.json: at most 524288 characters/);
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'failed' });
  });

  it("ends a task whose result is over the broker's message limit as failed too (RESOURCE_EXHAUSTED, not a busy answer)", async () => {
    const taskId = await startTask(alice, 'too big to send');
    const pending = alice.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
    await mcp.works.finish(taskId, 'x'.repeat(1_100_000));
    const result = await pending;
    expect(result.isError).toBe(true);
    expect(JSON.stringify(result.content)).toMatch(/could not be stored: .*the limit is 1048576 bytes/);
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'failed' });
  });

  it('gives the SDK a task store that knows no task: a client naming a task in request metadata learns nothing', async () => {
    const taskId = await startTask(alice, 'inert store');
    await mcp.works.running(taskId);
    expect(await mcp.guard.taskStore.getTask(taskId)).toBeNull();
    expect(await mcp.guard.taskStore.listTasks()).toEqual({ tasks: [] });
    await mcp.guard.taskStore.updateTaskStatus(taskId, 'input_required');
    expect(await alice.experimental.tasks.getTask(taskId)).toMatchObject({ status: 'working' });
    await mcp.works.finish(taskId, 'ok');
  });
});

describe('MCP tasks without the broker', () => {
  let t: TestBroker;
  let mcp: McpFixture;
  let alice: Client;

  beforeAll(async () => {
    t = await startTestBroker('pglite');
    // The guard's broker client points at a port where nothing listens.
    mcp = await startMcpFixture(t, { brokerAddress: '127.0.0.1:1', brokerDeadlineMs: 2_000 });
    alice = await mcp.connect(ALICE);
  }, 60_000);

  afterAll(async () => {
    await mcp?.close();
    await t?.close();
  });

  it('fails every task request closed with an error that names the broker', async () => {
    const unavailable = expect.objectContaining({ code: ErrorCode.InternalError, message: expect.stringMatching(/task broker unavailable: .*\(retry\)/) });
    await expect(startTask(alice, 'x')).rejects.toEqual(unavailable);
    const id = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';
    await expect(alice.experimental.tasks.getTask(id)).rejects.toEqual(unavailable);
    await expect(alice.experimental.tasks.getTaskResult(id, CallToolResultSchema)).rejects.toEqual(unavailable);
    await expect(alice.experimental.tasks.cancelTask(id)).rejects.toEqual(unavailable);
    await expect(alice.experimental.tasks.listTasks()).rejects.toEqual(unavailable);
    expect(mcp.guard.runningWorks).toBe(0);
  });

  it('refuses a tool call that is not task-augmented (the tool is task-only)', async () => {
    // The SDK answers with an error result, before any broker call or work.
    const result = await alice.callTool({ name: TOOL, arguments: { title: 'x' } });
    expect(result).toMatchObject({ isError: true, content: [{ type: 'text', text: expect.stringMatching(/requires task augmentation/) }] });
    expect(mcp.works.started).toHaveLength(0);
  });
});
