/**
 * The verifier SDK against a real broker over mTLS, in the modes the fake-broker tests cannot
 * show end to end: keys from the JWKS URL (with the issuer given), revocations 'online'
 * (VerifyToken decides, so a completed task's token is REVOKED at once) and 'none' (offline only:
 * still VALID after completion, which is why it is documented as blind to revocation).
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { createTaskTokenVerifier } from '../../src/verifier/index.js';
import { API, WORKER, startTestBroker, type TestBroker } from '../helpers/broker.js';

describe('verifier SDK against a real broker (postgres)', () => {
  let tb: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  let presenter: X509Certificate;

  beforeAll(async () => {
    tb = await startTestBroker('postgres');
    worker = await tb.client(WORKER);
    api = await tb.client(API);
    presenter = new X509Certificate(tb.svidOf(WORKER).certChainPem);
  }, 120_000);
  afterAll(async () => {
    await tb?.close();
  });

  async function liveToken(): Promise<{ taskId: string; token: string }> {
    const created = await worker.createTask({ spec: { action: 'invoice.export', audience: API, scopes: ['read'], ttl: { seconds: 600 } } });
    const taskId = created.task!.taskId;
    return { taskId, token: (await worker.issueToken({ taskId })).token };
  }

  it("keys from the JWKS URL; revocations 'online' see a completion at once", async () => {
    const verifier = createTaskTokenVerifier({ broker: api, jwks: tb.jwksUrl, issuer: tb.broker.lifecycle.issuer, revocations: 'online', reporting: false });
    await verifier.ready();
    const { taskId, token } = await liveToken();
    expect(await verifier.verify(token, { presenterCertificate: presenter })).toMatchObject({ valid: true, reason: 'VALID' });
    await worker.completeTask(taskId, 'done');
    expect(await verifier.verify(token, { presenterCertificate: presenter })).toMatchObject({ valid: false, reason: 'REVOKED' });
    // Another presenter's certificate is refused offline, before the broker is asked.
    const other = new X509Certificate(tb.svidOf(API).certChainPem);
    expect(await verifier.verify((await liveToken()).token, { presenterCertificate: other })).toMatchObject({ reason: 'BINDING_MISMATCH' });
    await verifier.close();
  });

  it("revocations 'none' is offline only: blind to a completion until exp", async () => {
    const verifier = createTaskTokenVerifier({ broker: api, revocations: 'none', reporting: false });
    await verifier.ready();
    const { taskId, token } = await liveToken();
    await worker.completeTask(taskId, 'done');
    expect(await verifier.verify(token, { presenterCertificate: presenter })).toMatchObject({ valid: true, reason: 'VALID' });
    await verifier.close();
  });
});
