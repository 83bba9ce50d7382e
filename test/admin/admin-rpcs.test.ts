/**
 * TaskBrokerAdmin over real mTLS on PostgreSQL and PGlite: every RPC, refusal of non-admins
 * (audited), RevokeWorkload by prefix, pagination while tasks are being created, the audit
 * trail with its chain check, and key rotation.
 */
import * as grpc from '@grpc/grpc-js';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { AdminClient } from '../../src/client/admin-client.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { TaskSpec } from '../../src/gen/taskbroker/v1/TaskSpec.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { ADMIN } from '../helpers/policy.js';

const spec = (overrides: Partial<TaskSpec> = {}): TaskSpec => ({
  action: 'job.run',
  resources: [],
  audience: API,
  scopes: ['s'],
  ttl: { seconds: 600 },
  ...overrides,
});

describe.each(STORES)('TaskBrokerAdmin on %s', (kind) => {
  let t: TestBroker;
  let admin: AdminClient;
  let worker: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, { limits: { maxTokenTtlSeconds: 300, defaultTokenTtlSeconds: 300 } });
    [admin, worker, api] = await Promise.all([t.adminClient(ADMIN), t.client(WORKER), t.client(API)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('refuses every admin RPC to a non-admin with PERMISSION_DENIED, and audits each attempt', async () => {
    const intruder = await t.adminClient(WORKER);
    const { task } = await worker.createTask({ spec: spec() });
    const attempts: Array<[string, () => Promise<unknown>]> = [
      ['RevokeTask', () => intruder.revokeTask(task!.taskId, 'x')],
      ['RevokeWorkload', () => intruder.revokeWorkload('spiffe://a.test/**', 'x')],
      ['ListTasks', () => intruder.listTasks({})],
      ['GetAuditTrail', () => intruder.getAuditTrail(task!.taskId)],
      ['ApproveTask', () => intruder.approveTask(task!.taskId, 'x')],
      ['RotateSigningKey', () => intruder.rotateSigningKey()],
    ];
    for (const [name, call] of attempts) {
      await expect(call(), name).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: `${name} is for admins only` });
    }
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${WORKER}`);
    expect(trail.filter((e) => e.type === 'access.denied').map((e) => e.details.operation)).toEqual(expect.arrayContaining(attempts.map(([n]) => n)));
    expect((await worker.getTask(task!.taskId)).task?.state).toBe('TASK_STATE_ACTIVE');
  });

  it('RevokeTask ends any live task as REVOKED and kills its tokens; unknown is NOT_FOUND; ended is FAILED_PRECONDITION', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const { token } = await worker.issueToken({ taskId: task!.taskId });
    const res = await admin.revokeTask(task!.taskId, 'incident 7');
    expect(res).toMatchObject({ revokedTokens: 1, task: { state: 'TASK_STATE_REVOKED', endedBy: ADMIN, endReason: 'incident 7' } });
    expect((await api.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    await expect(worker.issueToken({ taskId: task!.taskId })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await expect(admin.revokeTask(task!.taskId, 'again')).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    await expect(admin.revokeTask('tsk_AAAAAAAAAAAAAAAAAAAAAAAA', 'x')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(admin.revokeTask('nope', 'x')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const { trail } = await verifyTaskTrail(t.broker.store.db, task!.taskId);
    expect(trail.map((e) => e.type)).toEqual(['task.created', 'token.issued', 'task.revoked', 'token.verified', 'access.denied']);
    expect(trail[2]).toMatchObject({ type: 'task.revoked', actorSpiffeId: ADMIN, details: { revoked_tokens: 1, reason: 'incident 7' } });
  });

  it('a task past its ttl is EXPIRED when an admin touches it, not REVOKED', async () => {
    const { task } = await worker.createTask({ spec: spec({ ttl: { seconds: 30 } }) });
    t.clock.advance(31_000);
    try {
      await expect(admin.revokeTask(task!.taskId, 'late')).rejects.toMatchObject({
        code: grpc.status.FAILED_PRECONDITION,
        details: expect.stringMatching(/EXPIRED/),
      });
    } finally {
      t.clock.advance(-31_000);
    }
    const { trail } = await verifyTaskTrail(t.broker.store.db, task!.taskId);
    expect(trail.map((e) => e.type)).toEqual(['task.created', 'task.expired']);
  });

  it('RevokeWorkload by prefix revokes every live task and token of the matching workloads, and only theirs', async () => {
    const ids = [
      'spiffe://a.test/ns/billing/sa/a',
      'spiffe://a.test/ns/billing/sa/b',
      'spiffe://a.test/ns/billing/sa/b/extra',
      'spiffe://a.test/ns/billingx/sa/a',
      'spiffe://a.test/ns/other/sa/a',
    ];
    const issued = new Map<string, { taskId: string; token: string; presenter: string }>();
    for (const id of ids) {
      const c = await t.client(id);
      const { task } = await c.createTask({ spec: spec() });
      issued.set(id, { taskId: task!.taskId, token: (await c.issueToken({ taskId: task!.taskId })).token, presenter: (await c.whoAmI()).certThumbprint });
    }
    const res = await admin.revokeWorkload('spiffe://a.test/ns/billing/**', 'compromised');
    expect(res.revokedTasks).toBe(3);
    expect(res.revokedTokens).toBe(3);
    expect(new Set(res.taskIds)).toEqual(new Set(ids.slice(0, 3).map((id) => issued.get(id)!.taskId)));
    for (const [id, { token, presenter }] of issued) {
      const verdict = await api.verifyToken({ token, presenterCertThumbprint: presenter });
      const matched = id.startsWith('spiffe://a.test/ns/billing/');
      expect(verdict.valid, id).toBe(!matched);
      if (matched) expect(verdict.reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    }
    // An exact ID selects only that workload.
    const exact = await admin.revokeWorkload('spiffe://a.test/ns/other/sa/a', 'exact');
    expect(exact.taskIds).toEqual([issued.get('spiffe://a.test/ns/other/sa/a')!.taskId]);
    await expect(admin.revokeWorkload('spiffe://*.test/**', 'x')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(admin.revokeWorkload('', 'x')).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.filter((e) => e.type === 'admin.workload_revoked').map((e) => e.details.selector)).toEqual([
      'spiffe://a.test/ns/billing/**',
      'spiffe://a.test/ns/other/sa/a',
    ]);
  });

  it('ListTasks filters by owner pattern, state, audience and time range', async () => {
    const owner = 'spiffe://a.test/ns/list/sa/one';
    const c = await t.client(owner);
    const from = t.clock.now();
    const a = (await c.createTask({ spec: spec({ audience: 'spiffe://a.test/ns/list/sa/api' }) })).task!;
    const b = (await c.createTask({ spec: spec() })).task!;
    await c.completeTask(b.taskId, 'ok');
    const byOwner = await admin.listTasks({ owner: 'spiffe://a.test/ns/list/sa/*' });
    expect(byOwner.tasks.map((x) => x.taskId)).toEqual([b.taskId, a.taskId]); // newest first
    expect((await admin.listTasks({ owner, state: 'TASK_STATE_COMPLETED' })).tasks.map((x) => x.taskId)).toEqual([b.taskId]);
    expect((await admin.listTasks({ audience: 'spiffe://a.test/ns/list/**' })).tasks.map((x) => x.taskId)).toEqual([a.taskId]);
    const ts = (d: Date) => ({ seconds: Math.floor(d.getTime() / 1000), nanos: (d.getTime() % 1000) * 1e6 });
    expect((await admin.listTasks({ owner, createdAfter: ts(from) })).tasks).toHaveLength(2);
    expect((await admin.listTasks({ owner, createdBefore: ts(from) })).tasks).toHaveLength(0);
    await expect(admin.listTasks({ owner: 'spiffe://a.test/ns/li*' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(admin.listTasks({ pageSize: 501 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(admin.listTasks({ createdAfter: { seconds: '99999999999999', nanos: 0 } })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/created_after is out of range/),
    });
  });

  it('pagination has no gaps or repeats while tasks are being created', async () => {
    const owner = 'spiffe://a.test/ns/paging/sa/w';
    const c = await t.client(owner);
    const existing: string[] = [];
    for (let i = 0; i < 45; i++) existing.push((await c.createTask({ spec: spec() })).task!.taskId);
    let creating = true;
    const created: string[] = [];
    // Paging waits for the writer between pages (not for a while): every page boundary sees a new task, however slow the machine.
    let onCreated: () => void = () => undefined;
    const writer = (async () => {
      while (creating) {
        created.push((await c.createTask({ spec: spec() })).task!.taskId);
        onCreated();
      }
    })();
    const nextCreated = () => new Promise<void>((resolve) => (onCreated = resolve));
    const seen: string[] = [];
    let pageToken = '';
    let pages = 0;
    try {
      do {
        const page = await admin.listTasks({ owner, pageSize: 7, pageToken });
        seen.push(...page.tasks.map((x) => x.taskId));
        pageToken = page.nextPageToken;
        pages++;
        if (pageToken) await Promise.race([nextCreated(), writer]);
      } while (pageToken);
    } finally {
      creating = false;
      await writer;
    }
    expect(created.length).toBeGreaterThan(0);
    expect(new Set(seen).size).toBe(seen.length); // no repeats
    for (const id of existing) expect(seen).toContain(id); // no gaps
    expect(pages).toBeGreaterThanOrEqual(7);
    // A page token only works with the filters it was made for.
    const first = await admin.listTasks({ owner, pageSize: 5 });
    await expect(admin.listTasks({ owner: 'spiffe://a.test/**', pageSize: 5, pageToken: first.nextPageToken })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
    });
    await expect(admin.listTasks({ owner, pageToken: 'garbage' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('GetAuditTrail returns the events in order with the chain check, and reports a tampered chain', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    await worker.issueToken({ taskId: task!.taskId });
    await worker.completeTask(task!.taskId, 'ok');
    const res = await admin.getAuditTrail(task!.taskId);
    expect(res.events.map((e) => e.eventType)).toEqual(['task.created', 'token.issued', 'task.completed']);
    expect(res.events.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(res.events[1]?.prevHash).toBe(res.events[0]?.hash);
    expect(res.events[0]?.details?.fields?.action?.stringValue).toBe('job.run');
    expect(res.chain).toMatchObject({ ok: true, events: 3, brokenAt: 0, problem: '' });

    await t.broker.store.db
      .updateTable('audit_events')
      .set({ actor_spiffe_id: 'spiffe://a.test/someone' })
      .where('chain_id', '=', task!.taskId)
      .where('seq', '=', 2)
      .execute();
    expect((await admin.getAuditTrail(task!.taskId)).chain).toMatchObject({ ok: false, brokenAt: 2, problem: expect.stringMatching(/altered/) });
    await expect(admin.getAuditTrail('tsk_AAAAAAAAAAAAAAAAAAAAAAAA')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    // Reading the trail is itself on the record (the admin's chain, not the task's).
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.some((e) => e.type === 'admin.audit_read' && e.details.task_id === task!.taskId)).toBe(true);
  });

  it('GetAuditTrail pages a long trail; every page carries the check of the whole chain', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    for (let i = 0; i < 24; i++) await worker.getTask(task!.taskId);
    const seqs: number[] = [];
    let afterSeq = 0;
    let pages = 0;
    do {
      const page = await admin.getAuditTrail(task!.taskId, { afterSeq, pageSize: 10 });
      expect(page.chain).toMatchObject({ ok: true, events: 25 });
      seqs.push(...page.events.map((e) => e.seq));
      afterSeq = page.nextAfterSeq;
      pages++;
    } while (afterSeq !== 0);
    expect(pages).toBe(3);
    expect(seqs).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect((await admin.getWholeAuditTrail(task!.taskId)).events).toHaveLength(25);
    await expect(admin.getAuditTrail(task!.taskId, { pageSize: 1001 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('RotateSigningKey: new tokens use the new key; a token of the old key verifies until it expires; the old key leaves the JWKS after that', async () => {
    const { task } = await worker.createTask({ spec: spec() });
    const old = await worker.issueToken({ taskId: task!.taskId });
    const oldKid = decodeProtectedHeader(old.token).kid;
    const presenterCertThumbprint = (await worker.whoAmI()).certThumbprint;

    // Immediate: the new key signs at once (the pre-published path: test/tokens/signing-key-rpcs.test.ts).
    const rotated = await admin.rotateSigningKey({ immediate: true });
    expect(rotated.retiredKid).toBe(oldKid);
    expect(rotated.kid).not.toBe(oldKid);
    const fresh = await worker.issueToken({ taskId: task!.taskId });
    expect(decodeProtectedHeader(fresh.token).kid).toBe(rotated.kid);

    const jwks = (await (await fetch(t.jwksUrl)).json()) as JSONWebKeySet;
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual([oldKid, rotated.kid].sort());
    for (const token of [old.token, fresh.token]) {
      expect((await api.verifyToken({ token, presenterCertThumbprint })).valid).toBe(true);
      await jwtVerify(token, createRemoteJWKSet(new URL(t.jwksUrl)), { issuer: BROKER_ID, audience: API, currentDate: t.clock.now() });
    }
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(trail.at(-1)).toMatchObject({ type: 'admin.key_rotated', details: { kid: rotated.kid, retired_kid: oldKid } });

    // Past the old token's expiry (and the retired key's publication window) the old key is gone.
    t.clock.advance(400_000);
    try {
      const later = (await (await fetch(t.jwksUrl)).json()) as JSONWebKeySet;
      expect(later.keys.map((k) => k.kid)).toEqual([rotated.kid]);
      expect((await api.verifyToken({ token: old.token, presenterCertThumbprint })).valid).toBe(false);
      await expect(
        jwtVerify(old.token, createLocalJWKSet(later), { currentDate: new Date(Number(decodeProtectedHeader(old.token).iat ?? 0)) }),
      ).rejects.toThrow();
    } finally {
      t.clock.advance(-400_000);
    }
  });
});
