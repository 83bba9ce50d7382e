/**
 * Restarting the broker keeps every task, token state, signing key and audit event.
 */
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';

describe.each(STORES)('restart on %s', (kind) => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker(kind);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('keeps tasks, token states, keys and audit events', async () => {
    let worker = await t.client(WORKER);
    let api = await t.client(API);
    const thumbprint = (await worker.whoAmI()).certThumbprint;
    const spec = { action: 'restart.test', audience: API, scopes: ['s'], resources: [] };
    const live = (await worker.createTask({ spec, idempotencyKey: 'k1' })).task!;
    const liveToken = await worker.issueToken({ taskId: live.taskId });
    const ended = (await worker.createTask({ spec })).task!;
    const endedToken = await worker.issueToken({ taskId: ended.taskId });
    await worker.completeTask(ended.taskId, 'done');
    const jwksBefore = (await (await fetch(t.jwksUrl)).json()) as { keys: Array<{ kid: string }> };
    const trailBefore = await verifyTaskTrail(t.broker.store.db, live.taskId);

    await t.restart();
    worker = await t.client(WORKER);
    api = await t.client(API);
    // The client certificate changed with the new connection; bind checks use the old one.

    expect((await worker.getTask(live.taskId)).task).toMatchObject({ state: 'TASK_STATE_ACTIVE', taskHash: live.taskHash });
    expect((await worker.getTask(ended.taskId)).task).toMatchObject({ state: 'TASK_STATE_COMPLETED', endReason: 'done' });
    // The idempotency key still refers to the same task.
    expect((await worker.createTask({ spec, idempotencyKey: 'k1' })).task!.taskId).toBe(live.taskId);

    const stillValid = await api.verifyToken({ token: liveToken.token, presenterCertThumbprint: thumbprint });
    expect(stillValid).toMatchObject({ valid: true });
    expect((await api.verifyToken({ token: endedToken.token })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');

    const jwksAfter = (await (await fetch(t.jwksUrl)).json()) as { keys: Array<{ kid: string }> };
    expect(jwksAfter.keys.map((k) => k.kid)).toEqual(jwksBefore.keys.map((k) => k.kid));
    await jwtVerify(liveToken.token, createRemoteJWKSet(new URL(t.jwksUrl)), { issuer: BROKER_ID, audience: API, currentDate: t.clock.now() });

    const trailAfter = await verifyTaskTrail(t.broker.store.db, live.taskId);
    expect(trailAfter.ok).toBe(true);
    expect(trailAfter.trail.slice(0, trailBefore.trail.length)).toEqual(trailBefore.trail);
    expect(trailAfter.trail.map((e) => e.type)).toEqual(['task.created', 'token.issued', 'task.polled', 'task.create_replayed', 'token.verified']);
  });
});
