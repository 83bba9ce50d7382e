/**
 * Three broker replicas on one database (PostgreSQL; PGlite: one shared instance), a resource
 * server verifying offline with the verifier SDK subscribed to replica C. Tasks end on replica A
 * in every way a task can end (complete, cancel, expiry, admin revoke, revoke-workload): the
 * verifier learns each revocation through C and refuses the token with REVOKED. C is stopped
 * mid-way and started again on the same port: revocations committed meanwhile are not missed.
 * Offline verifications come back as token.used events on the task's chain, chain intact.
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { structToJson } from '../../src/protocol/struct.js';
import { createTaskTokenVerifier, type TaskTokenVerifier } from '../../src/verifier/index.js';
import { STORES } from '../helpers/db.js';
import { API, BROKER_ID, WORKER, startTestBroker, type TestBroker, type TestReplica } from '../helpers/broker.js';
import { ADMIN } from '../helpers/policy.js';

/** Resolves when the verifier has `taskId` in its revocation set. */
function revokedSoon(verifier: TaskTokenVerifier, taskId: string): Promise<void> {
  return new Promise((resolve) => {
    const stop = verifier.onRevoked((id) => {
      if (id === taskId) {
        stop();
        resolve();
      }
    });
  });
}

describe.each(STORES)('three replicas, one revocation log (%s)', (kind) => {
  let tb: TestBroker;
  let b: TestReplica;
  let c: TestReplica;
  let worker: BrokerClient;
  let verifier: TaskTokenVerifier;
  let presenter: X509Certificate;
  let apiOnC: BrokerClient;

  beforeAll(async () => {
    tb = await startTestBroker(kind, { revocationPollIntervalMs: 250, revocationHeartbeatIntervalMs: 250 });
    b = await tb.startReplica();
    c = await tb.startReplica();
    worker = await tb.client(WORKER);
    presenter = new X509Certificate(tb.svidOf(WORKER).certChainPem);
    // The resource server's own channel to C: it outlives C's restarts (the replica's clients do not).
    (await tb.client(API)).close();
    apiOnC = new BrokerClient({
      address: c.address,
      credentials: svidChannelCredentials({ ...tb.svidOf(API), bundle: tb.a.root.pem, serverId: BROKER_ID }),
      channelOptions: svidChannelOptions(),
    });
    verifier = createTaskTokenVerifier({
      broker: apiOnC,
      revocations: 'stream',
      maxStalenessMs: 60_000,
      reporting: { flushIntervalMs: 100 },
      logger: process.env.DEBUG_VERIFIER ? (level, msg, fields) => console.log(level, msg, fields) : undefined,
    });
    await verifier.ready();
  }, 180_000);
  afterAll(async () => {
    await verifier?.close();
    apiOnC?.close();
    await c?.close();
    await b?.close();
    await tb?.close();
  });

  /** A task on A with a token for API, verified VALID by the verifier first. */
  async function liveToken(client: BrokerClient = worker, ttlSeconds = 600): Promise<{ taskId: string; token: string }> {
    const created = await client.createTask({ spec: { action: 'invoice.export', audience: API, scopes: ['read'], ttl: { seconds: ttlSeconds } } });
    const taskId = created.task!.taskId;
    const { token } = await client.issueToken({ taskId });
    expect((await verifier.verify(token, { presenterCertificate: presenter, operation: 'read' })).reason).toBe('VALID');
    return { taskId, token };
  }

  async function expectRevoked(token: string): Promise<void> {
    expect(await verifier.verify(token, { presenterCertificate: presenter, operation: 'read' })).toMatchObject({ valid: false, reason: 'REVOKED' });
  }

  it('every way a task ends on A reaches the verifier through C', async () => {
    const admin = await tb.adminClient(ADMIN);
    const endings: Array<[string, (taskId: string) => Promise<unknown>]> = [
      ['complete', (id) => worker.completeTask(id, 'done')],
      ['cancel', (id) => worker.cancelTask(id, 'no longer needed')],
      ['admin revoke', (id) => admin.revokeTask(id, 'incident')],
      ['revoke-workload', () => admin.revokeWorkload(WORKER, 'compromised')],
    ];
    for (const [, end] of endings) {
      const { taskId, token } = await liveToken();
      const seen = revokedSoon(verifier, taskId);
      await end(taskId);
      await seen;
      await expectRevoked(token);
    }
    // Expiry: the sweeper of replica B ends it (the clock is shared by the replicas of this test).
    const { taskId, token } = await liveToken(worker, 60);
    const seen = revokedSoon(verifier, taskId);
    tb.clock.advance(61_000);
    await b.broker.sweep();
    await seen;
    // Within the verifier's clock leeway the token is refused as revoked, not accepted.
    tb.clock.advance(-61_000);
    await expectRevoked(token);
    admin.close();
  });

  it('no revocation is missed while the stream replica is down', async () => {
    const before = await liveToken();
    const port = c.port;
    await c.close();
    const missed: Array<{ taskId: string; token: string }> = [];
    for (let i = 0; i < 10; i++) missed.push(await liveTokenNoVerify());
    const seen = Promise.all(missed.map((m) => revokedSoon(verifier, m.taskId)));
    for (const m of missed) await worker.completeTask(m.taskId, 'done while C was down');
    await worker.completeTask(before.taskId, 'done');
    c = await tb.startReplica({ port });
    await seen;
    for (const m of missed) await expectRevoked(m.token);
    await expectRevoked(before.token);
  });

  it('offline verifications are on the task chain as token.used, chain intact', async () => {
    const { taskId, token } = await liveToken();
    for (let i = 0; i < 3; i++) await verifier.verify(token, { presenterCertificate: presenter, operation: 'result' });
    await verifier.flush();
    const admin = await tb.adminClient(ADMIN);
    const trail = await admin.getWholeAuditTrail(taskId);
    expect(trail.chain?.ok).toBe(true);
    const used = trail.events.filter((e) => e.eventType === 'token.used');
    expect(used).toHaveLength(4);
    expect(used.map((e) => (structToJson(e.details) as { operation: string }).operation)).toEqual(['read', 'result', 'result', 'result']);
    admin.close();
  });

  /** A task with a token, not verified (the verifier's stream replica may be down). */
  async function liveTokenNoVerify(): Promise<{ taskId: string; token: string }> {
    const created = await worker.createTask({ spec: { action: 'invoice.export', audience: API, scopes: ['read'], ttl: { seconds: 600 } } });
    const taskId = created.task!.taskId;
    const { token } = await worker.issueToken({ taskId });
    return { taskId, token };
  }
});
