/**
 * Delegation chains over real mTLS, on PostgreSQL and PGlite: a three-hop chain A→B→C narrowing
 * at each hop, every widening refused and on the parent's record, the act chain in C's tokens
 * (checked with jose against the JWKS), a root's end ending its whole subtree in one
 * transaction (also under a race of 500 chains), a child ending alone, delegators' reads, and the
 * policy decided again at request time for every hop.
 */
import * as grpc from '@grpc/grpc-js';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { unaryCall, type BrokerClient } from '../../src/client/broker-client.js';
import type { DelegateTaskRequest } from '../../src/gen/taskbroker/v1/DelegateTaskRequest.js';
import type { DelegateTaskResponse__Output } from '../../src/gen/taskbroker/v1/DelegateTaskResponse.js';
import { STORES } from '../helpers/db.js';
import { BROKER_ID, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { ADMIN, MutablePolicySource, policyOf } from '../helpers/policy.js';

const A = WORKER;
const B = 'spiffe://a.test/ns/tools/sa/summarizer';
const C = 'spiffe://a.test/ns/tools/sa/fetcher';
const D = 'spiffe://a.test/ns/tools/sa/deep';
const OUTSIDER = 'spiffe://a.test/ns/other/sa/helper';
const WAREHOUSE = 'spiffe://a.test/ns/data/sa/warehouse';
const LAKE = 'spiffe://a.test/ns/data/sa/lake';
const ELSEWHERE = 'spiffe://a.test/ns/elsewhere/sa/api';

const policyText = (readChildren: boolean, maxDepth = 2) => `
version: 1
admins: [${ADMIN}]
rules:
  - name: agents
    callers: {spiffe_ids: ["${A}"]}
    actions: [report.build]
    audiences: ["${WAREHOUSE}"]
    scopes: [reports:read, reports:write, reports:delete]
    delegation:
      to: ["spiffe://a.test/ns/tools/**"]
      max_depth: ${maxDepth}
      scopes: [reports:read, reports:write]
      audiences: ["spiffe://a.test/ns/data/**"]
      read_children: ${readChildren}
  - name: no-delegation
    callers: {spiffe_ids: ["${A}"]}
    actions: [report.quiet]
    audiences: ["${WAREHOUSE}"]
    scopes: [reports:read]
`;

const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (err: grpc.ServiceError) => grpc.status[err.code],
  );

function delegate(client: BrokerClient, request: DelegateTaskRequest): Promise<DelegateTaskResponse__Output> {
  return unaryCall((md, opts, cb) => client.raw.DelegateTask(request, md, opts, cb));
}

describe.each(STORES)('delegation chains over mTLS on %s', (kind) => {
  let t: TestBroker;
  let policy: MutablePolicySource;
  let a: BrokerClient;
  let b: BrokerClient;
  let c: BrokerClient;
  let warehouse: BrokerClient;

  beforeAll(async () => {
    policy = new MutablePolicySource(policyOf(policyText(false)));
    t = await startTestBroker(kind, { policy });
    [a, b, c, warehouse] = await Promise.all([t.client(A), t.client(B), t.client(C), t.client(WAREHOUSE)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  const trail = async (taskId: string) => (await verifyTaskTrail(t.broker.store.db, taskId)).trail;

  async function root(resources = ['reports/2026/'], ttl = 600, action = 'report.build') {
    const res = await a.createTask({
      spec: {
        action,
        resources,
        audience: WAREHOUSE,
        scopes: action === 'report.build' ? ['reports:read', 'reports:write', 'reports:delete'] : ['reports:read'],
        ttl: { seconds: ttl },
      },
    });
    return res.task!;
  }

  async function chain() {
    const rootTask = await root();
    const hopB = await delegate(a, {
      parentTaskId: rootTask.taskId,
      delegatee: B,
      spec: { scopes: ['reports:read', 'reports:write'], resources: ['reports/2026/q1/'], ttl: { seconds: 300 } },
    });
    const hopC = await delegate(b, {
      parentTaskId: hopB.task!.taskId,
      delegatee: C,
      spec: { scopes: ['reports:read'], resources: ['reports/2026/q1/summary.csv'], ttl: { seconds: 120 } },
    });
    return { rootTask, hopB, hopC };
  }

  const verify = async (token: string, presenter: string) =>
    warehouse.verifyToken({ token, presenterCertDer: new X509Certificate(t.svidOf(presenter).certChainPem).raw });

  it('A→B→C narrows at each hop; each child names its parent, root, depth and delegators, and its hash covers the parent hash', async () => {
    const { rootTask, hopB, hopC } = await chain();
    const childB = hopB.task!;
    const childC = hopC.task!;
    expect(childB).toMatchObject({
      ownerSpiffeId: B,
      parentTaskId: rootTask.taskId,
      rootTaskId: rootTask.taskId,
      depth: 1,
      delegators: [A],
      state: 'TASK_STATE_ACTIVE',
    });
    expect(childC).toMatchObject({ ownerSpiffeId: C, parentTaskId: childB.taskId, rootTaskId: rootTask.taskId, depth: 2, delegators: [B, A] });
    expect(childB.spec).toMatchObject({
      action: 'report.build',
      audience: WAREHOUSE,
      scopes: ['reports:read', 'reports:write'],
      resources: ['reports/2026/q1/'],
    });
    expect(childC.spec).toMatchObject({ scopes: ['reports:read'], resources: ['reports/2026/q1/summary.csv'] });
    expect((JSON.parse(hopB.canonicalSpec) as { parent_task_hash: string }).parent_task_hash).toBe(rootTask.taskHash);
    expect((JSON.parse(hopC.canonicalSpec) as { parent_task_hash: string }).parent_task_hash).toBe(childB.taskHash);
    // The delegatee follows up on its child like an owner; the delegator (read_children: false) cannot.
    expect((await c.getTask(childC.taskId)).task!.taskId).toBe(childC.taskId);
    expect(await codeOf(b.getTask(childC.taskId))).toBe('NOT_FOUND');
    expect(await codeOf(a.getTask(childB.taskId))).toBe('NOT_FOUND');
    // Evidence of every hop: task.delegated on the parent's chain, task.created (naming parent and delegator) on the child's.
    const delegated = (await trail(rootTask.taskId)).find((e) => e.type === 'task.delegated');
    expect(delegated).toMatchObject({ actorSpiffeId: A, details: expect.objectContaining({ delegatee: B, child_task_id: childB.taskId, depth: 1 }) });
    const created = (await trail(childC.taskId))[0]!;
    expect(created).toMatchObject({ type: 'task.created', actorSpiffeId: B });
    expect(created.details).toMatchObject({ parent_task_id: childB.taskId, delegated_by: B, delegators: [B, A], root_task_id: rootTask.taskId });
  });

  it("C's token carries act for B then A and parent_task_id; jose verifies it against the JWKS; the resource server sees the actors", async () => {
    const { hopC } = await chain();
    const issued = await c.issueToken({ taskId: hopC.task!.taskId });
    const { payload, protectedHeader } = await jwtVerify(issued.token, createRemoteJWKSet(new URL(t.jwksUrl)), {
      issuer: BROKER_ID,
      audience: WAREHOUSE,
      typ: 'task+jwt',
    });
    expect(protectedHeader.typ).toBe('task+jwt');
    expect(payload).toMatchObject({ sub: C, ver: 2, parent_task_id: hopC.task!.parentTaskId, act: { sub: B, act: { sub: A } } });
    expect((payload.act as { act: { act?: unknown } }).act.act).toBeUndefined();
    const res = await verify(issued.token, C);
    expect(res).toMatchObject({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID' });
    expect(res.claims).toMatchObject({ version: 2, actors: [B, A], parentTaskId: hopC.task!.parentTaskId, subject: C });
  });

  it('every widening is refused and recorded on the parent: scope, resource, ttl, audience, depth, delegatee, and a rule without delegation', async () => {
    const { rootTask, hopB, hopC } = await chain();
    const parentB = hopB.task!.taskId;
    const attempts: Array<[string, () => Promise<unknown>, RegExp]> = [
      [
        'scope beyond the parent',
        () => delegate(b, { parentTaskId: parentB, delegatee: C, spec: { scopes: ['reports:delete'] } }),
        /scopes not granted to the parent task: reports:delete/,
      ],
      [
        'scope the rule does not hand on',
        () => delegate(a, { parentTaskId: rootTask.taskId, delegatee: B, spec: { scopes: ['reports:delete'] } }),
        /reports:delete/,
      ],
      [
        'resource beyond the parent',
        () => delegate(b, { parentTaskId: parentB, delegatee: C, spec: { resources: ['reports/2025/q1/x.csv'] } }),
        /resources not within/,
      ],
      ['ttl beyond the parent', () => delegate(b, { parentTaskId: parentB, delegatee: C, spec: { ttl: { seconds: 3600 } } }), /ttl 3600s is beyond/],
      ['audience the rule does not allow', () => delegate(b, { parentTaskId: parentB, delegatee: C, spec: { audience: ELSEWHERE } }), /audience/],
      ['deeper than max_depth', () => delegate(c, { parentTaskId: hopC.task!.taskId, delegatee: D, spec: {} }), /depth 3 exceeds max_depth 2/],
      ['a delegatee the rule does not name', () => delegate(b, { parentTaskId: parentB, delegatee: OUTSIDER, spec: {} }), /delegation.to/],
    ];
    for (const [what, attempt, message] of attempts) {
      const err = await attempt().then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err, what).toBeDefined();
      expect(grpc.status[err!.code], what).toBe('PERMISSION_DENIED');
      expect(err!.details, what).toMatch(message);
    }
    const denials = [...(await trail(rootTask.taskId)), ...(await trail(parentB)), ...(await trail(hopC.task!.taskId))].filter(
      (e) => e.type === 'access.denied' && e.details.operation === 'DelegateTask',
    );
    expect(denials).toHaveLength(attempts.length);
    // Another audience the rule does allow for delegation is not a widening.
    const lake = await delegate(b, { parentTaskId: parentB, delegatee: C, spec: { audience: LAKE, scopes: ['reports:read'] } });
    expect(lake.task!.spec!.audience).toBe(LAKE);
    // A rule without a delegation block allows none (max_depth 0 by default).
    const quiet = await root(['reports/'], 600, 'report.quiet');
    const refused = delegate(a, { parentTaskId: quiet.taskId, delegatee: B, spec: {} });
    await expect(refused).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/no delegation|max_depth 0/) });
    // Only the parent's owner delegates: anyone else gets NOT_FOUND, as for a task that does not exist.
    expect(await codeOf(delegate(c, { parentTaskId: parentB, delegatee: D, spec: {} }))).toBe('NOT_FOUND');
  });

  it("completing A's task ends B's and C's in the same transaction and revokes all their tokens; the subtree's revocations are logged", async () => {
    const { rootTask, hopB, hopC } = await chain();
    const tokenB = (await b.issueToken({ taskId: hopB.task!.taskId })).token;
    const tokenC = (await c.issueToken({ taskId: hopC.task!.taskId })).token;
    expect((await verify(tokenC, C)).valid).toBe(true);
    const done = await a.completeTask(rootTask.taskId, 'report built');
    expect(done.task!.state).toBe('TASK_STATE_COMPLETED');
    expect(done.revokedTokens).toBe(2);
    for (const [token, who] of [
      [tokenB, B],
      [tokenC, C],
    ] as const)
      expect((await verify(token, who)).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    const rows = await t.broker.store.db
      .selectFrom('tasks')
      .select(['task_id', 'state', 'ended_at', 'ended_by'])
      .where('task_id', 'in', [rootTask.taskId, hopB.task!.taskId, hopC.task!.taskId])
      .execute();
    expect(new Set(rows.map((r) => r.ended_at!.getTime())).size).toBe(1);
    expect(rows.filter((r) => r.task_id !== rootTask.taskId).map((r) => r.state)).toEqual(['CANCELLED', 'CANCELLED']);
    for (const child of [hopB.task!.taskId, hopC.task!.taskId]) {
      const last = (await trail(child)).find((e) => e.type === 'task.cancelled');
      expect(last).toMatchObject({ type: 'task.cancelled', details: expect.objectContaining({ ended_with: rootTask.taskId, to_state: 'CANCELLED' }) });
    }
    const ended = (await trail(rootTask.taskId)).find((e) => e.type === 'task.completed')!;
    expect(ended.details).toMatchObject({ descendants_ended: 2, descendant_tokens_revoked: 2 });
    const logged = await t.broker.store.db
      .selectFrom('revocations')
      .select(['task_id', 'audience'])
      .where('task_id', 'in', [hopB.task!.taskId, hopC.task!.taskId])
      .execute();
    expect(logged).toHaveLength(2);
    // Nothing can be issued or delegated from an ended child.
    expect(await codeOf(c.issueToken({ taskId: hopC.task!.taskId }))).toBe('FAILED_PRECONDITION');
  });

  it('WatchRevocations subscribers hear of every task of the subtree, in the commit that ended the root', async () => {
    const stream = warehouse.watchRevocations();
    const messages: Array<{ revocations: Array<{ taskId: string; taskState: string }> }> = [];
    let seen: () => void = () => undefined;
    stream.on('data', (m: { revocations: Array<{ taskId: string; taskState: string }> }) => {
      messages.push(m);
      seen();
    });
    stream.on('error', () => undefined);
    const next = () => new Promise<void>((resolve) => (seen = resolve));
    await next(); // the snapshot
    const { rootTask, hopB, hopC } = await chain();
    await a.issueToken({ taskId: rootTask.taskId });
    await b.issueToken({ taskId: hopB.task!.taskId });
    await c.issueToken({ taskId: hopC.task!.taskId });
    const ids = [rootTask.taskId, hopB.task!.taskId, hopC.task!.taskId];
    const heard = () => new Map(messages.slice(1).flatMap((m) => m.revocations.map((r) => [r.taskId, r.taskState] as const)));
    const done = a.completeTask(rootTask.taskId, 'done');
    while (!ids.every((id) => heard().has(id))) await next();
    await done;
    stream.cancel();
    expect(ids.map((id) => heard().get(id))).toEqual(['TASK_STATE_COMPLETED', 'TASK_STATE_CANCELLED', 'TASK_STATE_CANCELLED']);
  });

  it("B completing its own child task ends it and C's below it, and leaves A's task ACTIVE", async () => {
    const { rootTask, hopB, hopC } = await chain();
    const tokenA = (await a.issueToken({ taskId: rootTask.taskId })).token;
    const done = await b.completeTask(hopB.task!.taskId, 'summary written');
    expect(done.task!.state).toBe('TASK_STATE_COMPLETED');
    expect((await a.getTask(rootTask.taskId)).task!.state).toBe('TASK_STATE_ACTIVE');
    expect((await c.getTask(hopC.task!.taskId)).task!.state).toBe('TASK_STATE_CANCELLED');
    expect((await verify(tokenA, A)).valid).toBe(true);
  });

  it('admin revoke and expiry of the root end the subtree too', async () => {
    const revoked = await chain();
    const admin = await t.adminClient(ADMIN);
    await admin.revokeTask(revoked.rootTask.taskId, 'incident');
    expect((await c.getTask(revoked.hopC.task!.taskId)).task!.state).toBe('TASK_STATE_REVOKED');
    const expiring = await chain();
    t.clock.advance(601_000);
    try {
      await expect(codeOf(a.issueToken({ taskId: expiring.rootTask.taskId }))).resolves.toBe('FAILED_PRECONDITION');
      expect((await b.getTask(expiring.hopB.task!.taskId)).task!.state).toBe('TASK_STATE_EXPIRED');
      expect((await c.getTask(expiring.hopC.task!.taskId)).task!.state).toBe('TASK_STATE_EXPIRED');
    } finally {
      t.clock.advance(-601_000);
    }
  });

  it('the policy is decided again for every hop at request time: removing the delegation block stops the children; read_children lets delegators read, on the record', async () => {
    const { hopB, hopC } = await chain();
    policy.set(policyOf(policyText(true)));
    try {
      const read = await a.getTask(hopC.task!.taskId);
      expect(read.task!.ownerSpiffeId).toBe(C);
      const events = await trail(hopC.task!.taskId);
      expect(events.at(-1)).toMatchObject({ type: 'task.read_by_delegator', actorSpiffeId: A });
      policy.set(policyOf(policyText(true, 1)));
      // C is two hops below the root now that only one is allowed: refused, and recorded.
      await expect(c.issueToken({ taskId: hopC.task!.taskId })).rejects.toMatchObject({
        code: grpc.status.PERMISSION_DENIED,
        details: expect.stringMatching(/depth 2 exceeds max_depth 1/),
      });
      expect((await b.issueToken({ taskId: hopB.task!.taskId })).token).toBeTruthy();
    } finally {
      policy.set(policyOf(policyText(false)));
    }
  });

  it('an idempotent delegation retry returns the same child; the same key with another spec is refused', async () => {
    const rootTask = await root();
    const request = { parentTaskId: rootTask.taskId, delegatee: B, spec: { scopes: ['reports:read'] }, idempotencyKey: 'hop-1' };
    const first = await delegate(a, request);
    const again = await delegate(a, request);
    expect(again).toMatchObject({ replayed: true, task: { taskId: first.task!.taskId } });
    await expect(delegate(a, { ...request, spec: { scopes: ['reports:write'] } })).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });
  });

  it('bad input is INVALID_ARGUMENT naming the field', async () => {
    const rootTask = await root();
    await expect(delegate(a, { parentTaskId: rootTask.taskId, delegatee: 'not-a-spiffe-id', spec: {} })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^delegatee/),
    });
    await expect(delegate(a, { parentTaskId: 'tsk_nope', delegatee: B, spec: {} })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(delegate(a, { parentTaskId: rootTask.taskId, delegatee: B, spec: { scopes: ['has space'] } })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/spec.scopes/),
    });
  });

  it('race: 500 chains, each root completed while its leaf issues tokens: afterwards no token of any chain verifies', { timeout: 300_000 }, async () => {
    // Each caller may have 32 calls in flight: 16 chains at a time keep every caller below that.
    const chains = await mapLimit(
      Array.from({ length: 500 }, (_, i) => i),
      16,
      () => chain(),
    );
    const issued: Array<{ token: string; who: string }> = [];
    await mapLimit(chains, 16, async ({ rootTask, hopB, hopC }) => {
      const leafIssues = Array.from({ length: 2 }, () =>
        c.issueToken({ taskId: hopC.task!.taskId }).then(
          (r) => issued.push({ token: r.token, who: C }),
          () => undefined,
        ),
      );
      const middle = b.issueToken({ taskId: hopB.task!.taskId }).then(
        (r) => issued.push({ token: r.token, who: B }),
        () => undefined,
      );
      await Promise.all([a.completeTask(rootTask.taskId, 'done'), ...leafIssues, middle]);
    });
    const results = await mapLimit(issued, 24, ({ token, who }) => verify(token, who));
    expect(results.length).toBeGreaterThan(0);
    expect(results.filter((r) => r.valid)).toEqual([]);
    const live = await t.broker.store.db
      .selectFrom('tasks')
      .select((eb) => eb.fn.countAll<string | number>().as('n'))
      .where(
        'root_task_id',
        'in',
        chains.map((ch) => ch.rootTask.taskId),
      )
      .where('state', 'in', ['ACTIVE', 'PENDING_APPROVAL'])
      .executeTakeFirstOrThrow();
    expect(Number(live.n)).toBe(0);
  });
});

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}
