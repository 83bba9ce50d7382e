/**
 * Use-limited tokens over real mTLS on PostgreSQL and PGlite: VerifyToken accepts a token with
 * max_uses at most that many times, counted atomically across replicas; the next answer is
 * USES_EXHAUSTED, and each use is on the task's record.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker, type TestReplica } from '../helpers/broker.js';

describe.each(STORES)('use-limited tokens on %s', (kind) => {
  let t: TestBroker;
  let replicas: TestReplica[];
  let worker: BrokerClient;
  let verifiers: BrokerClient[];
  let presenter: Buffer;

  beforeAll(async () => {
    t = await startTestBroker(kind);
    replicas = [await t.startReplica(), await t.startReplica()];
    worker = await t.client(WORKER);
    presenter = new X509Certificate(t.svidOf(WORKER).certChainPem).raw;
    // The resource server talks to all three replicas.
    verifiers = [await t.client(API), ...(await Promise.all(replicas.map((r) => r.client(API))))];
  });
  afterAll(async () => {
    for (const r of replicas ?? []) await r.close();
    await t?.close();
  });

  async function tokenWith(maxUses: number) {
    const task = (
      await worker.createTask({ spec: { action: 'artifact.sign', resources: ['release/v1.2.3'], audience: API, scopes: ['sign'], ttl: { seconds: 600 } } })
    ).task!;
    return { task, issued: await worker.issueToken({ taskId: task.taskId, maxUses }) };
  }

  const verifyOn = (i: number, token: string) => verifiers[i % verifiers.length]!.verifyToken({ token, presenterCertDer: presenter });

  it('max_uses 1 under 16 concurrent VerifyToken calls on 3 replicas: exactly one VALID, the rest USES_EXHAUSTED', async () => {
    const { task, issued } = await tokenWith(1);
    expect(decodeJwt(issued.token).max_uses).toBe(1);
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => verifyOn(i, issued.token)));
    const reasons = answers.map((a) => a.reason);
    expect(reasons.filter((r) => r === 'VERIFY_TOKEN_REASON_VALID')).toHaveLength(1);
    expect(reasons.filter((r) => r === 'VERIFY_TOKEN_REASON_USES_EXHAUSTED')).toHaveLength(15);
    const valid = answers.find((a) => a.valid)!;
    expect(valid.claims).toMatchObject({ maxUses: 1, usesLeft: 0 });
    const verified = (await verifyTaskTrail(t.broker.store.db, task.taskId)).trail.filter((e) => e.type === 'token.verified');
    expect(verified.map((e) => e.details.result).sort()).toEqual(['valid', ...Array<string>(15).fill('uses-exhausted')].sort());
    expect(verified.find((e) => e.details.result === 'valid')!.details).toMatchObject({ use: 1, max_uses: 1 });
  });

  it('max_uses 3: three VALID answers in all, counting down, however the calls spread over replicas', async () => {
    const { issued } = await tokenWith(3);
    const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => verifyOn(i, issued.token)));
    const valid = answers.filter((a) => a.valid);
    expect(valid).toHaveLength(3);
    expect(valid.map((a) => a.claims!.usesLeft).sort()).toEqual([0, 1, 2]);
  });

  it('a refused verification is not a use; a token without max_uses is not counted; max_uses beyond 1000 is INVALID_ARGUMENT', async () => {
    const { issued } = await tokenWith(1);
    const wrongPresenter = await verifiers[0]!.verifyToken({ token: issued.token, presenterCertThumbprint: 'not-the-presenter' });
    expect(wrongPresenter.reason).toBe('VERIFY_TOKEN_REASON_BINDING_MISMATCH');
    expect((await verifyOn(1, issued.token)).valid).toBe(true);
    const plain = await tokenWith(0);
    expect(decodeJwt(plain.issued.token).max_uses).toBeUndefined();
    for (let i = 0; i < 3; i++) expect((await verifyOn(i, plain.issued.token)).claims!.maxUses).toBe(0);
    await expect(worker.issueToken({ taskId: plain.task.taskId, maxUses: 1001 })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/max_uses/),
    });
  });
});
