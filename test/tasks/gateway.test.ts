/**
 * Gateways (an MCP server, say) over real mTLS on PostgreSQL and PGlite: a task created for a
 * requester (its forwarded X509-SVID chain, or its subject token) is the requester's and served
 * by the gateway; every poll, result read, listing and cancel the gateway makes for a requester
 * names it and must be the creator, else NOT_FOUND as for a stranger, on the record; the gateway
 * issues the task's tokens (sub the owner, act the gateway, bound to the gateway's certificate);
 * a stored result is handed out while the rule retains it, then only its absence is.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import type { Requester } from '../../src/gen/taskbroker/v1/Requester.js';
import { printAuditTrail } from '../../src/cli/admin/render.js';
import { structToJson } from '../../src/protocol/struct.js';
import { certificateThumbprint } from '../../src/spiffe/certificate.js';
import { STORES } from '../helpers/db.js';
import { startTestBroker, type TestBroker } from '../helpers/broker.js';
import { subjectIssuersYaml, testIdp, type TestIdp } from '../helpers/idp.js';
import { ADMIN, MutablePolicySource, policyOf } from '../helpers/policy.js';

const MCP = 'spiffe://a.test/ns/mcp/sa/mcp-server';
const OTHER_MCP = 'spiffe://a.test/ns/mcp/sa/other-server';
const ALICE = 'spiffe://a.test/ns/agents/sa/alice';
const BOB = 'spiffe://a.test/ns/agents/sa/bob';
const MALLORY = 'spiffe://b.test/ns/agents/sa/mallory';

const policyText = (idp: TestIdp, retention = '1h') => `
version: 1
admins: [${ADMIN}]
${subjectIssuersYaml(idp)}
rules:
  - name: mcp-tools
    callers: {trust_domains: [a.test, b.test]}
    actions: [report.generate]
    audiences: ["${MCP}", "${OTHER_MCP}"]
    scopes: ["*"]
    gateways: ["${MCP}", "${OTHER_MCP}"]
    result_retention: ${retention}
  - name: mcp-sessions
    callers: {spiffe_ids: ["${MCP}"]}
    actions: [session.report]
    audiences: ["${MCP}"]
    scopes: ["*"]
    gateways: ["${MCP}"]
    principals: {issuers: [${idp.issuer}]}
    bind_session: true
  - name: direct
    callers: {trust_domains: [a.test]}
    actions: [direct.only]
    audiences: ["${MCP}"]
    scopes: ["*"]
`;

const spec = (action = 'report.generate'): CreateTaskRequest['spec'] => ({
  action,
  resources: [],
  audience: MCP,
  scopes: ['reports:read'],
  params: { fields: { arguments_sha256: { stringValue: 'abc' } } },
  ttl: { seconds: 600 },
});

describe.each(STORES)('gateways on %s', (kind) => {
  let t: TestBroker;
  let idp: TestIdp;
  let policy: MutablePolicySource;
  let mcp: BrokerClient;
  let otherMcp: BrokerClient;
  let alice: Requester;
  let bob: Requester;
  let aliceThumb: string;

  const chainOf = async (id: string): Promise<Requester> => {
    const svid = await mintX509Svid(id.startsWith('spiffe://b.test') ? t.b.root : t.a.root, id);
    return { x509SvidChain: [svid.der, ...svid.intermediates.map((c) => c.der)] };
  };
  const code = async (p: Promise<unknown>) => {
    try {
      await p;
      return 'OK';
    } catch (err) {
      return grpc.status[(err as grpc.ServiceError).code];
    }
  };
  /** The task's trail as the admin API hands it out; the chain must check. */
  const trail = async (taskId: string) => {
    const res = await (await t.adminClient(ADMIN)).getWholeAuditTrail(taskId);
    expect(res.chain?.ok).toBe(true);
    return res.events.map((e) => ({ type: e.eventType, actor: e.actorSpiffeId, details: structToJson(e.details) }));
  };

  beforeAll(async () => {
    idp = await testIdp();
    policy = new MutablePolicySource(policyOf(policyText(idp)));
    t = await startTestBroker(kind, { policy });
    [mcp, otherMcp] = await Promise.all([t.client(MCP), t.client(OTHER_MCP)]);
    [alice, bob] = await Promise.all([chainOf(ALICE), chainOf(BOB)]);
    aliceThumb = certificateThumbprint(alice.x509SvidChain![0] as Uint8Array);
  }, 60_000);
  afterAll(async () => {
    await t?.close();
  });

  it("creates the requester's task, served by the gateway; each poll, result read and cancel names the requester", async () => {
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: alice });
    expect(task).toMatchObject({ ownerSpiffeId: ALICE, gateway: MCP, state: 'TASK_STATE_ACTIVE' });

    const polled = await mcp.getTask({ taskId: task!.taskId, operation: 'TASK_OPERATION_POLL', onBehalfOf: alice });
    expect(polled.task?.taskId).toBe(task!.taskId);
    const early = await mcp.getTask({ taskId: task!.taskId, operation: 'TASK_OPERATION_RESULT', onBehalfOf: alice });
    expect(early.result).toBeNull();
    expect(early.resultExpired).toBe(false);

    const stored = JSON.stringify({ content: [{ type: 'text', text: 'done' }] });
    const done = await mcp.completeTask({ taskId: task!.taskId, outcome: 'completed', result: { json: stored, failed: false } });
    expect(done.task).toMatchObject({ state: 'TASK_STATE_COMPLETED', hasResult: true, resultFailed: false });
    const read = await mcp.getTask({ taskId: task!.taskId, operation: 'TASK_OPERATION_RESULT', onBehalfOf: alice });
    expect(read.result?.json).toBe(stored);
    expect(read.result?.failed).toBe(false);

    const events = await trail(task!.taskId);
    expect(events.map((e) => e.type)).toEqual(['task.created', 'task.polled', 'task.result_read', 'task.completed', 'task.result_read']);
    expect(events[0]!.actor).toBe(MCP);
    expect(events[0]!.details).toMatchObject({ owner: ALICE, gateway: MCP, requester: { spiffe_id: ALICE, cert_thumbprint: aliceThumb } });
    for (const e of [events[1]!, events[2]!, events[4]!]) expect(e.details).toMatchObject({ requester: { spiffe_id: ALICE } });
    expect(events[2]!.details).toMatchObject({ result: 'not yet' });
    expect(events[4]!.details).toMatchObject({ result: 'handed out' });
    expect(events[3]!.details).toMatchObject({ result_stored: true, result_failed: false });

    // What `task-broker admin audit-trail` prints of it tells the story.
    const lines: string[] = [];
    const res = await (await t.adminClient(ADMIN)).getWholeAuditTrail(task!.taskId);
    printAuditTrail({ ...res, chain: res.chain! }, (line) => lines.push(line));
    const text = lines.join('\n');
    expect(text).toMatch(/^SEQ +TIME +EVENT +ACTOR +ON BEHALF OF +REQUEST ID +DETAILS$/m);
    expect(text).toMatch(new RegExp(`^  created +\\S+ by ${MCP} for ${ALICE}$`, 'm'));
    expect(text).toContain(`  polled       1 time by ${ALICE} via ${MCP}`);
    expect(text).toContain(`  result read  2 times by ${ALICE} via ${MCP}`);
    expect(text).toMatch(new RegExp(`^  ended +completed \\S+ by ${MCP}: completed \\(0 tokens revoked\\)$`, 'm'));
    expect(text).toContain('hash chain verified: 5 events');

    const second = (await mcp.createTask({ spec: spec(), onBehalfOf: alice })).task!;
    const cancelled = await mcp.cancelTask({ taskId: second.taskId, reason: 'client cancelled', onBehalfOf: alice });
    expect(cancelled.task?.state).toBe('TASK_STATE_CANCELLED');
    const cancelEvent = (await trail(second.taskId)).at(-1)!;
    expect(cancelEvent.type).toBe('task.cancelled');
    expect(cancelEvent.details).toMatchObject({ requester: { spiffe_id: ALICE } });
  });

  it('another requester, another gateway, or the owner asking for a stranger: NOT_FOUND, each on the record', async () => {
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: alice });
    const id = task!.taskId;
    expect(await code(mcp.getTask({ taskId: id, onBehalfOf: bob }))).toBe('NOT_FOUND');
    expect(await code(mcp.getTask({ taskId: id, operation: 'TASK_OPERATION_RESULT', onBehalfOf: bob }))).toBe('NOT_FOUND');
    expect(await code(mcp.cancelTask({ taskId: id, reason: 'x', onBehalfOf: bob }))).toBe('NOT_FOUND');
    expect(await code(otherMcp.getTask({ taskId: id, onBehalfOf: alice }))).toBe('NOT_FOUND');
    expect(await code(otherMcp.issueToken({ taskId: id }))).toBe('NOT_FOUND');
    const missing = 'tsk_' + 'A'.repeat(24);
    expect(await code(mcp.getTask({ taskId: missing, onBehalfOf: bob }))).toBe('NOT_FOUND');

    const denied = (await trail(id)).filter((e) => e.type === 'access.denied').map((e) => e.details);
    expect(denied.map((d) => d.operation)).toEqual(['GetTask', 'GetTask(result)', 'CancelTask', 'GetTask', 'IssueToken']);
    expect(denied[0]).toMatchObject({ reason: 'the requester is not the one the task was created for', requester: { spiffe_id: BOB } });
    expect(denied[3]).toMatchObject({ reason: 'caller is not the gateway of the task', requester: { spiffe_id: ALICE } });
    expect((await mcp.getTask({ taskId: id, onBehalfOf: alice })).task?.state).toBe('TASK_STATE_ACTIVE');
  });

  it('a forged, foreign or malformed requester credential is refused before any task is looked up', async () => {
    const rogue = await import('../helpers/pki.js').then((m) => m.trustDomainPki('a.test'));
    const forged = await mintX509Svid(rogue.root, ALICE);
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: { x509SvidChain: [forged.der] } }))).toBe('PERMISSION_DENIED');
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: { x509SvidChain: [Buffer.from('not a certificate')] } }))).toBe('INVALID_ARGUMENT');
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: { x509SvidChain: alice.x509SvidChain, subjectToken: 'x' } }))).toBe('INVALID_ARGUMENT');
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: { x509SvidChain: Array.from({ length: 11 }, () => Buffer.alloc(10)) } }))).toBe(
      'INVALID_ARGUMENT',
    );
    // A rule without gateways does not let a gateway create its tasks; a rule with gateways is only for them.
    expect(await code(mcp.createTask({ spec: spec('direct.only'), onBehalfOf: alice }))).toBe('PERMISSION_DENIED');
    const aliceItself = await t.client(ALICE);
    expect(await code(aliceItself.createTask({ spec: spec() }))).toBe('PERMISSION_DENIED');
    // A gateway cannot name itself as the requester (it would reach the tasks of its subject requesters).
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: await chainOf(MCP) }))).toBe('INVALID_ARGUMENT');
  });

  it('the gateway serves the task: its owner may read and cancel it, not issue its tokens, complete it or delegate from it', async () => {
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: alice });
    const owner = await t.client(ALICE);
    expect((await owner.getTask(task!.taskId)).task?.taskId).toBe(task!.taskId);
    expect(await code(owner.issueToken({ taskId: task!.taskId }))).toBe('PERMISSION_DENIED');
    expect(await code(owner.completeTask({ taskId: task!.taskId, outcome: 'forged', result: { json: '{"forged":true}', failed: false } }))).toBe(
      'PERMISSION_DENIED',
    );
    expect(await code(owner.delegateTask({ parentTaskId: task!.taskId, delegatee: BOB, spec: {} }))).toBe('PERMISSION_DENIED');
    const denied = (await trail(task!.taskId)).filter((e) => e.type === 'access.denied');
    expect(denied.map((e) => e.details.operation)).toEqual(['IssueToken', 'CompleteTask', 'DelegateTask']);
    expect(denied[0]!.details.reason).toContain(`served by its gateway ${MCP}`);
    expect((await owner.cancelTask({ taskId: task!.taskId, reason: 'changed my mind' })).task?.state).toBe('TASK_STATE_CANCELLED');
  });

  it("a gateway's idempotency keys are its own: a retry replays, another gateway's same key is its own task", async () => {
    const first = await mcp.createTask({ spec: spec(), onBehalfOf: alice, idempotencyKey: 'call-1' });
    const again = await mcp.createTask({ spec: spec(), onBehalfOf: alice, idempotencyKey: 'call-1' });
    expect(again.replayed).toBe(true);
    expect(again.task?.taskId).toBe(first.task?.taskId);
    const other = await otherMcp.createTask({ spec: spec(), onBehalfOf: alice, idempotencyKey: 'call-1' });
    expect(other.replayed).toBe(false);
    expect(other.task?.taskId).not.toBe(first.task?.taskId);
    const replay = (await trail(first.task!.taskId)).find((e) => e.type === 'task.create_replayed');
    expect(replay?.details).toMatchObject({ idempotency_key: 'call-1', gateway: MCP, requester: { spiffe_id: ALICE } });
  });

  it("the gateway's tokens: sub the requester, act the gateway, bound to the gateway's certificate; REVOKED once the task ends", async () => {
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: alice });
    const issued = await mcp.issueToken({ taskId: task!.taskId });
    const claims = decodeJwt(issued.token);
    expect(claims).toMatchObject({ sub: ALICE, aud: MCP, act: { sub: MCP }, task_id: task!.taskId });
    const audience = await t.client(MCP);
    const mcpThumb = (await mcp.whoAmI()).certThumbprint;
    expect((claims.cnf as Record<string, string>)['x5t#S256']).toBe(mcpThumb);
    const ok = await audience.verifyToken({ token: issued.token, presenterCertThumbprint: mcpThumb });
    expect(ok).toMatchObject({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID' });
    expect(ok.claims?.actors).toEqual([MCP]);
    await mcp.completeTask({ taskId: task!.taskId, outcome: 'completed' });
    const after = await audience.verifyToken({ token: issued.token, presenterCertThumbprint: mcpThumb });
    expect(after.reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
  });

  it("a verified requester chain is remembered only while its trust domain's bundle stays the same", async () => {
    const mallory = await chainOf(MALLORY);
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: mallory });
    expect((await mcp.getTask({ taskId: task!.taskId, onBehalfOf: mallory })).task?.ownerSpiffeId).toBe(MALLORY);
    // Federation with b.test ends: the next request naming a b.test requester is refused at once, not served from memory.
    t.bundles.delete('b.test');
    try {
      expect(await code(mcp.getTask({ taskId: task!.taskId, onBehalfOf: mallory }))).toBe('PERMISSION_DENIED');
    } finally {
      t.bundles.set(t.b.bundle());
    }
    expect((await mcp.getTask({ taskId: task!.taskId, onBehalfOf: mallory })).task?.taskId).toBe(task!.taskId);
  });

  it('ListOwnTasks for a requester shows only the tasks created for it through this gateway', async () => {
    const mine = (await mcp.createTask({ spec: spec(), onBehalfOf: bob })).task!.taskId;
    const viaOther = (await otherMcp.createTask({ spec: spec(), onBehalfOf: bob })).task!.taskId;
    const malloryTask = (await mcp.createTask({ spec: spec(), onBehalfOf: await chainOf(MALLORY) })).task!.taskId;
    const seen: string[] = [];
    let pageToken = '';
    do {
      const page = await mcp.listOwnTasks({ onBehalfOf: bob, pageSize: 1, pageToken });
      seen.push(...page.tasks.map((x) => x.taskId));
      for (const x of page.tasks) expect(x).toMatchObject({ ownerSpiffeId: BOB, gateway: MCP });
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(seen).toContain(mine);
    expect(seen).not.toContain(viaOther);
    expect(seen).not.toContain(malloryTask);
    const forMallory = await mcp.listOwnTasks({ onBehalfOf: await chainOf(MALLORY) });
    expect(forMallory.tasks.map((x) => x.taskId)).toContain(malloryTask);
    expect(forMallory.tasks.map((x) => x.taskId)).not.toContain(mine);
    for (const x of forMallory.tasks) expect(x.ownerSpiffeId).toBe(MALLORY);
    expect(await code(mcp.listOwnTasks({ onBehalfOf: bob, pageToken: 'garbage' }))).toBe('INVALID_ARGUMENT');
  });

  it('a result is handed out while the rule retains it; after that only its absence, each read still an event', async () => {
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: alice });
    await mcp.completeTask({ taskId: task!.taskId, outcome: 'failed', result: { json: '{"isError":true}', failed: true } });
    const read = await mcp.getTask({ taskId: task!.taskId, operation: 'TASK_OPERATION_RESULT', onBehalfOf: alice });
    expect(read.result).toMatchObject({ json: '{"isError":true}', failed: true });
    // The policy now keeps results for a minute: the reads after it are cut short at once.
    policy.set(policyOf(policyText(idp, '60s')));
    try {
      t.clock.advance(61_000);
      const late = await mcp.getTask({ taskId: task!.taskId, operation: 'TASK_OPERATION_RESULT', onBehalfOf: alice });
      expect(late.result).toBeNull();
      expect(late.resultExpired).toBe(true);
      const last = (await trail(task!.taskId)).at(-1)!;
      expect(last.type).toBe('task.result_read');
      expect(last.details).toMatchObject({ result: 'retention ended' });
    } finally {
      policy.set(policyOf(policyText(idp)));
    }
    expect(await code(mcp.completeTask({ taskId: 'tsk_' + 'B'.repeat(24), outcome: '', result: { json: '{', failed: false } }))).toBe('INVALID_ARGUMENT');
  });

  it('a subject-token requester: the task is the gateway’s, bound to the person; another person gets NOT_FOUND', async () => {
    const carol = await idp.token({ sub: 'carol', sid: 's1' });
    const dave = await idp.token({ sub: 'dave', sid: 's2' });
    const { task } = await mcp.createTask({ spec: spec(), onBehalfOf: { subjectToken: carol } });
    expect(task).toMatchObject({ ownerSpiffeId: MCP, gateway: MCP, principal: { issuer: idp.issuer, subject: 'carol' } });
    expect((await mcp.getTask({ taskId: task!.taskId, onBehalfOf: { subjectToken: await idp.token({ sub: 'carol', sid: 's9' }) } })).task?.taskId).toBe(
      task!.taskId,
    );
    expect(await code(mcp.getTask({ taskId: task!.taskId, onBehalfOf: { subjectToken: dave } }))).toBe('NOT_FOUND');
    expect(await code(mcp.createTask({ spec: spec(), onBehalfOf: { subjectToken: await idp.forged({ sub: 'carol' }) } }))).toBe('PERMISSION_DENIED');
    const listed = await mcp.listOwnTasks({ onBehalfOf: { subjectToken: dave } });
    expect(listed.tasks.map((x) => x.taskId)).not.toContain(task!.taskId);
    // A certificate requester never reaches a subject requester's task, even one with the gateway's own ID.
    expect(await code(otherMcp.getTask({ taskId: task!.taskId, onBehalfOf: await chainOf(MCP) }))).toBe('NOT_FOUND');
  });

  it('bind_session: the requester must be of the same session; the gateway issues and completes for its work without one', async () => {
    const session = await idp.token({ sub: 'erin', sid: 'sess-1' });
    const { task } = await mcp.createTask({ spec: { ...spec('session.report') }, onBehalfOf: { subjectToken: session } });
    const sameSession = await idp.token({ sub: 'erin', sid: 'sess-1' });
    expect((await mcp.getTask({ taskId: task!.taskId, onBehalfOf: { subjectToken: sameSession } })).task?.taskId).toBe(task!.taskId);
    const otherSession = await idp.token({ sub: 'erin', sid: 'sess-2' });
    expect(await code(mcp.getTask({ taskId: task!.taskId, onBehalfOf: { subjectToken: otherSession } }))).toBe('NOT_FOUND');
    expect((await mcp.issueToken({ taskId: task!.taskId })).token).toBeTruthy();
    const done = await mcp.completeTask({ taskId: task!.taskId, outcome: 'completed', result: { json: '{}', failed: false } });
    expect(done.task?.state).toBe('TASK_STATE_COMPLETED');
  });
});
