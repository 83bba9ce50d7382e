/**
 * WatchRevocations, ReportTokenUse and GetSigningKeys against a real broker over mTLS, on
 * PostgreSQL and PGlite: the audience sees each revocation (complete, cancel, expiry, admin
 * revoke, revoke-workload) after a snapshot, resumes with its cursor without gaps or repeats,
 * and sees nothing addressed to others; reported offline verifications land on the task's chain
 * once, however often they are sent.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { WatchRevocationsResponse__Output } from '../../src/gen/taskbroker/v1/WatchRevocationsResponse.js';
import { STORES } from '../helpers/db.js';
import { API, STRANGER, WORKER, startTestBroker, type TestBroker } from '../helpers/broker.js';

import { ADMIN } from '../helpers/policy.js';

/** Reads a stream's messages as they come; next() waits for the following one. */
function reader(stream: grpc.ClientReadableStream<WatchRevocationsResponse__Output>) {
  const queue: WatchRevocationsResponse__Output[] = [];
  const waiters: Array<(m: WatchRevocationsResponse__Output) => void> = [];
  let failure: grpc.ServiceError | undefined;
  const failed: Array<(e: grpc.ServiceError) => void> = [];
  stream.on('data', (m: WatchRevocationsResponse__Output) => {
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  stream.on('error', (e: grpc.ServiceError) => {
    failure = e;
    for (const f of failed.splice(0)) f(e);
  });
  return {
    next: () =>
      new Promise<WatchRevocationsResponse__Output>((resolve, reject) => {
        const m = queue.shift();
        if (m) return resolve(m);
        if (failure) return reject(failure);
        waiters.push(resolve);
        failed.push(reject);
      }),
    /** The next message that carries revocations (heartbeats skipped). */
    async nextRevocations() {
      for (;;) {
        const m = await this.next();
        if (m.revocations.length > 0) return m;
      }
    },
    error: () =>
      new Promise<grpc.ServiceError>((resolve) => {
        if (failure) resolve(failure);
        else failed.push(resolve);
      }),
    cancel: () => stream.cancel(),
  };
}

async function taskWithToken(worker: BrokerClient, audience = API): Promise<{ taskId: string; tokenId: string }> {
  const created = await worker.createTask({ spec: { action: 'invoice.export', audience, scopes: ['read'], ttl: { seconds: 600 } } });
  const taskId = created.task!.taskId;
  const issued = await worker.issueToken({ taskId });
  return { taskId, tokenId: issued.tokenId };
}

describe.each(STORES)('revocation stream and access reports (%s)', (kind) => {
  let tb: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    tb = await startTestBroker(kind, { revocationHeartbeatIntervalMs: 200, revocationPollIntervalMs: 200 });
    worker = await tb.client(WORKER);
    api = await tb.client(API);
  }, 120_000);
  afterAll(async () => {
    await tb?.close();
  });

  it('sends a snapshot, then each revocation of the audience, whatever ended the task', async () => {
    const before = await taskWithToken(worker);
    await worker.completeTask(before.taskId, 'done');
    const stream = reader(api.watchRevocations());
    const first = await stream.next();
    expect(first.snapshot).toBe(true);
    expect(first.revocations.map((r) => r.taskId)).toContain(before.taskId);
    expect(first.heartbeatInterval).not.toBeNull();

    const cancelled = await taskWithToken(worker);
    await worker.cancelTask(cancelled.taskId, 'changed my mind');
    const m1 = await stream.nextRevocations();
    expect(m1.snapshot).toBe(false);
    expect(m1.revocations).toEqual([
      expect.objectContaining({ taskId: cancelled.taskId, taskState: 'TASK_STATE_CANCELLED', reason: 'changed my mind', revokedTokens: 1 }),
    ]);

    const admin = await tb.adminClient(ADMIN);
    const revoked = await taskWithToken(worker);
    await admin.revokeTask(revoked.taskId, 'incident 42');
    expect((await stream.nextRevocations()).revocations[0]).toMatchObject({ taskId: revoked.taskId, taskState: 'TASK_STATE_REVOKED' });

    const viaWorkload = await taskWithToken(worker);
    await admin.revokeWorkload(WORKER, 'compromised');
    expect((await stream.nextRevocations()).revocations.map((r) => r.taskId)).toContain(viaWorkload.taskId);

    const expiring = await taskWithToken(worker);
    tb.clock.advance(601_000);
    await tb.broker.sweep();
    expect((await stream.nextRevocations()).revocations[0]).toMatchObject({ taskId: expiring.taskId, taskState: 'TASK_STATE_EXPIRED' });
    tb.clock.advance(-601_000);
    admin.close();
    stream.cancel();
  });

  it('resumes after a cursor without gaps or repeats, and heartbeats while idle', async () => {
    const stream = reader(api.watchRevocations());
    const first = await stream.next();
    const a = await taskWithToken(worker);
    await worker.completeTask(a.taskId, 'done');
    const seen = await stream.nextRevocations();
    stream.cancel();
    // Two more while nobody listens.
    const b = await taskWithToken(worker);
    const c = await taskWithToken(worker);
    await worker.completeTask(b.taskId, 'done');
    await worker.cancelTask(c.taskId, 'no');
    const resumed = reader(api.watchRevocations(seen.cursor));
    const r1 = await resumed.next();
    expect(r1.snapshot).toBe(false);
    expect(r1.revocations.map((r) => r.taskId)).toEqual([b.taskId, c.taskId]);
    // Nothing else comes but heartbeats, each with the same cursor.
    const beat = await resumed.next();
    expect(beat.revocations).toEqual([]);
    expect(beat.cursor).toBe(r1.cursor);
    expect(first.cursor).not.toBe(r1.cursor);
    resumed.cancel();
  });

  it('a cursor from elsewhere gets a snapshot; other audiences see nothing', async () => {
    const stranger = await tb.client(STRANGER);
    const s = reader(stranger.watchRevocations('somewhere-else.12'));
    const first = await s.next();
    expect(first.snapshot).toBe(true);
    expect(first.revocations).toEqual([]);
    const t = await taskWithToken(worker);
    await worker.completeTask(t.taskId, 'done');
    const beat = await s.next();
    expect(beat.revocations).toEqual([]);
    s.cancel();
    stranger.close();
  });

  it("marks the end of the start; a cursor past the log head gets a snapshot; a revocation stays in snapshots for the verifier leeway past its tokens' expiry", async () => {
    const first = reader(api.watchRevocations());
    const start = await first.next();
    expect(start).toMatchObject({ snapshot: true, startComplete: true });
    first.cancel();
    // A cursor of this database beyond its head (as after a restore from an older backup).
    const instance = start.cursor.slice(0, start.cursor.lastIndexOf('.'));
    const ahead = reader(api.watchRevocations(`${instance}.999999999`));
    expect(await ahead.next()).toMatchObject({ snapshot: true, startComplete: true });
    ahead.cancel();
    // Tokens that expired 30 s ago may still be accepted by a verifier with a 60 s tolerance: their revocation is still sent.
    const expiredAgo = (seconds: number) =>
      tb.broker.store.db
        .insertInto('revocations')
        .values({
          task_id: `tsk_leeway${seconds}AAAAAAAAAAAAAAAA`.slice(0, 28),
          audience: API,
          task_state: 'COMPLETED',
          reason: 'done',
          revoked_at: new Date(Date.now() - (seconds + 10) * 1000),
          revoked_tokens: 1,
          tokens_expire_by: new Date(Date.now() - seconds * 1000),
        })
        .execute();
    await expiredAgo(30);
    await expiredAgo(120);
    const late = reader(api.watchRevocations());
    const ids = (await late.next()).revocations.map((r) => r.taskId);
    expect(ids).toContain('tsk_leeway30AAAAAAAAAAAAAAAA');
    expect(ids).not.toContain('tsk_leeway120AAAAAAAAAAAAAAA');
    late.cancel();
  });

  it('refuses more streams than a caller may hold', async () => {
    const client = await tb.client('spiffe://a.test/ns/demo/sa/greedy');
    const streams = Array.from({ length: 8 }, () => reader(client.watchRevocations()));
    await Promise.all(streams.map((s) => s.next()));
    const ninth = reader(client.watchRevocations());
    expect((await ninth.error()).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    for (const s of streams) s.cancel();
    client.close();
  });

  it('serves the JWKS and issuer over the authenticated channel', async () => {
    const keys = await api.getSigningKeys();
    const jwks = JSON.parse(keys.jwksJson) as { keys: Array<{ kid: string }> };
    expect(jwks.keys.length).toBeGreaterThan(0);
    expect(keys.issuer).toBe(tb.broker.lifecycle.issuer);
    expect(['ES256', 'EdDSA']).toContain(keys.alg);
  });

  it('records reported uses as token.used once, for the audience only', async () => {
    const { taskId, tokenId } = await taskWithToken(worker);
    const use = (reportId: string) => ({
      reportId,
      tokenId,
      taskId,
      outcome: 'VERIFY_TOKEN_REASON_VALID' as const,
      operation: 'read',
      verifiedAt: { seconds: String(Math.floor(Date.now() / 1000)), nanos: 0 },
    });
    expect(await api.reportTokenUse([use('r-1'), use('r-2')])).toEqual({ recorded: 2, duplicates: 0, rejected: 0 });
    // A retry of the same reports (the answer was lost) records nothing new.
    expect(await api.reportTokenUse([use('r-1'), use('r-2'), use('r-3')], { perMessage: 1 })).toEqual({ recorded: 1, duplicates: 2, rejected: 0 });
    // The owner is not the audience: rejected like an unknown task.
    expect(await worker.reportTokenUse([use('w-1')])).toEqual({ recorded: 0, duplicates: 0, rejected: 1 });
    const admin = await tb.adminClient(ADMIN);
    const trail = await admin.getWholeAuditTrail(taskId);
    expect(trail.chain?.ok).toBe(true);
    const used = trail.events.filter((e) => e.eventType === 'token.used');
    expect(used).toHaveLength(3);
    admin.close();
    const metrics = await (await fetch(`${tb.opsUrl}/metrics`)).text();
    expect(metrics).toMatch(/task_broker_token_uses_reported_total\{result="duplicate"\} 2/);
    expect(metrics).toMatch(/task_broker_revocation_log_read_age_seconds \d/);
  });

  it('records a call that names many tasks (its operations go to the write queue a few at a time)', async () => {
    const tasks = await Promise.all(Array.from({ length: 20 }, () => taskWithToken(worker)));
    const verifiedAt = { seconds: String(Math.floor(Date.now() / 1000)), nanos: 0 };
    const uses = tasks.map((t, i) => ({
      reportId: `many-${i}`,
      tokenId: t.tokenId,
      taskId: t.taskId,
      outcome: 'VERIFY_TOKEN_REASON_VALID' as const,
      operation: 'read',
      verifiedAt,
    }));
    expect(await api.reportTokenUse(uses)).toEqual({ recorded: 20, duplicates: 0, rejected: 0 });
  });

  it('refuses malformed and oversized reports with INVALID_ARGUMENT, recording nothing', async () => {
    const { taskId, tokenId } = await taskWithToken(worker);
    const good = {
      reportId: 'x',
      tokenId,
      taskId,
      outcome: 'VERIFY_TOKEN_REASON_VALID' as const,
      operation: 'read',
      verifiedAt: { seconds: String(Math.floor(Date.now() / 1000)) },
    };
    await expect(api.reportTokenUse([{ ...good, operation: 'bad op' }])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(api.reportTokenUse([{ ...good, taskId: 'nope' }])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(api.reportTokenUse([{ ...good, verifiedAt: undefined }])).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const many = Array.from({ length: 1025 }, (_, i) => ({ ...good, reportId: `m-${i}` }));
    await expect(api.reportTokenUse(many)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('1024') });
    expect(await api.reportTokenUse([good])).toEqual({ recorded: 1, duplicates: 0, rejected: 0 });
  });
});
