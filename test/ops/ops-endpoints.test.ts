/**
 * The ops surface of a whole broker (real mTLS, real databases): /healthz, /readyz with each
 * check, gRPC health per service following readiness (database gone, no policy, SVID expired,
 * shutting down), and /metrics after real RPCs.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { API, BROKER_ID, STRANGER, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { STORES } from '../helpers/db.js';
import { pemOf, trustDomainPki } from '../helpers/pki.js';
import { ADMIN, MutablePolicySource, PERMISSIVE_POLICY, policyOf } from '../helpers/policy.js';
import { eventually, HEALTH_SERVICES, healthClient, healthOfAll, readyz, sample, scrape } from './helpers.js';

function spec(): CreateTaskRequest['spec'] {
  return { action: 'invoice.export', resources: ['invoices/2026-11'], audience: API, scopes: ['invoices:read'], ttl: { seconds: 600 } };
}

const allServing = Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'SERVING']));
const noneServing = Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING']));

describe.each(STORES)('ops endpoints on %s', (kind) => {
  let t: TestBroker;
  beforeAll(async () => {
    t = await startTestBroker(kind);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('/healthz answers 200 from the process alone, for GET and HEAD', async () => {
    const res = await fetch(`${t.opsUrl}/healthz`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.json()).toMatchObject({ status: 'alive', uptimeSeconds: expect.any(Number) });
    const head = await fetch(`${t.opsUrl}/healthz`, { method: 'HEAD' });
    expect(head.status).toBe(200);
  });

  it('/readyz answers 200 with every check passing', async () => {
    const { status, body } = await readyz(t);
    expect(status).toBe(200);
    expect(body.status).toBe('ready');
    expect(Object.keys(body.checks).sort()).toEqual(['database', 'file_descriptors', 'migrations', 'policy', 'svid', 'writes']);
    for (const check of Object.values(body.checks)) expect(check).toMatchObject({ ok: true, durationMs: expect.any(Number) });
    expect(body.checks.svid?.detail).toMatchObject({ spiffeId: BROKER_ID });
    expect(body.checks.database?.detail).toEqual({ kind });
    expect(t.broker.readiness.ready).toBe(true);
  });

  it('gRPC health reports SERVING for the server and each service while ready', async () => {
    const health = await healthClient(t);
    try {
      expect(await healthOfAll(health)).toEqual(allServing);
      await expect(health.check('no.such.Service')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    } finally {
      health.close();
    }
  });

  it('/metrics counts RPCs by method and status, tokens, verification reasons, revocations, audit latency and pool use', async () => {
    const [worker, api, stranger] = await Promise.all([t.client(WORKER), t.client(API), t.client(STRANGER)]);
    const created = await worker.createTask({ spec: spec() });
    const taskId = created.task!.taskId;
    const { token } = await worker.issueToken({ taskId });
    const presenterCertThumbprint = (await worker.whoAmI()).certThumbprint;
    expect((await api.verifyToken({ token, presenterCertThumbprint })).reason).toBe('VERIFY_TOKEN_REASON_VALID');
    expect((await stranger.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH');
    await expect(stranger.getTask(taskId)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    expect((await worker.completeTask(taskId, 'done')).revokedTokens).toBe(1);
    expect((await api.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    expect((await api.verifyToken({ token: 'not.a.token' })).reason).toBe('VERIFY_TOKEN_REASON_MALFORMED');
    // A task ended by an admin, and a caller from a trust domain nobody trusts (refused before any handler).
    const second = await worker.createTask({ spec: spec() });
    await worker.issueToken({ taskId: second.task!.taskId });
    const admin = await t.adminClient(ADMIN);
    await admin.revokeTask(second.task!.taskId, 'ops test');
    const c = await trustDomainPki('c.test');
    const outsider = new BrokerClient({
      address: t.address,
      credentials: svidChannelCredentials({
        ...(await pemOf(await mintX509Svid(c.root, 'spiffe://c.test/intruder'))),
        bundle: t.a.root.pem,
        serverId: BROKER_ID,
      }),
      channelOptions: svidChannelOptions(),
    });
    await expect(outsider.whoAmI()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    outsider.close();

    const text = await scrape(t);
    const svc = 'taskbroker.v1.TaskBroker';
    // go-grpc-prometheus names, labels and code spelling, so stock gRPC dashboards and alerts work.
    const rpc = (method: string, code: string, service = svc) =>
      sample(text, 'grpc_server_handled_total', { grpc_service: service, grpc_method: method, grpc_type: 'unary', grpc_code: code });
    expect(rpc('CreateTask', 'OK')).toBe(2);
    expect(rpc('IssueToken', 'OK')).toBe(2);
    expect(rpc('VerifyToken', 'OK')).toBe(4);
    expect(rpc('GetTask', 'NotFound')).toBe(1);
    expect(rpc('CompleteTask', 'OK')).toBe(1);
    expect(rpc('RevokeTask', 'OK', 'taskbroker.v1.TaskBrokerAdmin')).toBe(1);
    expect(rpc('WhoAmI', 'Unauthenticated')).toBe(1);
    expect(sample(text, 'grpc_server_started_total', { grpc_service: svc, grpc_method: 'CreateTask', grpc_type: 'unary' })).toBe(2);
    // Latency histograms by method, with their buckets.
    const hist = { grpc_service: svc, grpc_method: 'CreateTask', grpc_type: 'unary' };
    expect(sample(text, 'grpc_server_handling_seconds_count', hist)).toBe(2);
    expect(sample(text, 'grpc_server_handling_seconds_bucket', { ...hist, le: '+Inf' })).toBe(2);
    expect(sample(text, 'grpc_server_handling_seconds_bucket', { ...hist, le: '0.005' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'grpc_server_handling_seconds_sum', hist)).toBeGreaterThan(0);
    expect(sample(text, 'task_broker_grpc_requests_in_flight', { service: svc, method: 'CreateTask' })).toBe(0);
    // Tokens, verifications by reason, endings by final state, tokens revoked with them.
    expect(sample(text, 'task_broker_tokens_issued_total')).toBe(2);
    expect(sample(text, 'task_broker_token_verifications_total', { reason: 'valid' })).toBe(1);
    expect(sample(text, 'task_broker_token_verifications_total', { reason: 'audience-mismatch' })).toBe(1);
    expect(sample(text, 'task_broker_token_verifications_total', { reason: 'revoked' })).toBe(1);
    expect(sample(text, 'task_broker_token_verifications_total', { reason: 'malformed' })).toBe(1);
    expect(sample(text, 'task_broker_tasks_ended_total', { state: 'COMPLETED' })).toBe(1);
    expect(sample(text, 'task_broker_tasks_ended_total', { state: 'REVOKED' })).toBe(1);
    expect(sample(text, 'task_broker_tokens_revoked_total')).toBe(2);
    // Audit writes: every RPC above appended at least one event.
    expect(sample(text, 'task_broker_audit_write_duration_seconds_count')).toBeGreaterThanOrEqual(9);
    expect(sample(text, 'task_broker_audit_write_duration_seconds_bucket', { le: '+Inf' })).toBeGreaterThanOrEqual(9);
    // Identity, bundles, pool, readiness, process.
    const expiry = sample(text, 'task_broker_svid_expiry_timestamp_seconds')!;
    expect(expiry * 1000).toBeGreaterThan(Date.now());
    expect(sample(text, 'task_broker_svid_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'task_broker_trust_bundle_age_seconds', { trust_domain: 'a.test' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'task_broker_trust_bundle_age_seconds', { trust_domain: 'b.test' })).toBeGreaterThanOrEqual(0);
    const pool = sample(text, 'task_broker_db_pool_connections')!;
    expect(pool).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'task_broker_db_pool_idle_connections')).toBeLessThanOrEqual(pool);
    expect(sample(text, 'task_broker_db_pool_waiting_requests')).toBe(0);
    expect(sample(text, 'task_broker_db_pool_max_connections')).toBeGreaterThanOrEqual(pool);
    expect(sample(text, 'task_broker_ready')).toBe(1);
    expect(sample(text, 'task_broker_readiness_check', { check: 'database' })).toBe(1);
    // prom-client's process and Node.js defaults, unprefixed as stock dashboards expect them.
    expect(sample(text, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(sample(text, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(sample(text, 'nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    // Every metric is the broker's, the gRPC server's or the process's; no token or task ID ever becomes a label.
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) expect(line).toMatch(/^(task_broker_|grpc_server_|process_|nodejs_)/);
    expect(text).not.toContain(token);
    expect(text).not.toContain(token.split('.')[2]);
    expect(text).not.toContain(taskId);
  });

  it('a bundle change resets its trust domain age', async () => {
    const before = sample(await scrape(t), 'task_broker_trust_bundle_age_seconds', { trust_domain: 'b.test' })!;
    await new Promise((r) => setTimeout(r, 1_100));
    const aged = sample(await scrape(t), 'task_broker_trust_bundle_age_seconds', { trust_domain: 'b.test' })!;
    expect(aged).toBeGreaterThan(before);
    t.bundles.set(t.b.bundle());
    const after = sample(await scrape(t), 'task_broker_trust_bundle_age_seconds', { trust_domain: 'b.test' })!;
    expect(after).toBeLessThan(aged);
    expect(sample(await scrape(t), 'task_broker_trust_bundle_age_seconds', { trust_domain: 'a.test' })).toBeGreaterThanOrEqual(aged);
  });

  it('the database going away makes the broker not ready and every health status NOT_SERVING; liveness stays 200', async () => {
    const own = await startTestBroker(kind, { databasePingTimeoutMs: 500 });
    const health = await healthClient(own);
    try {
      expect(await healthOfAll(health)).toEqual(allServing);
      await own.broker.store.close();
      // /readyz re-evaluates on demand once its last verdict is over a second old.
      await eventually(async () => (await readyz(own)).status === 503, 5_000, '/readyz 503');
      const { status, body } = await readyz(own);
      expect(status).toBe(503);
      expect(body.status).toBe('not ready');
      expect(body.checks.database).toMatchObject({ ok: false, reason: expect.any(String) });
      expect(body.checks.policy?.ok).toBe(true);
      expect(body.checks.svid?.ok).toBe(true);
      expect(await healthOfAll(health)).toEqual(noneServing);
      expect((await fetch(`${own.opsUrl}/healthz`)).status).toBe(200);
      expect(sample(await scrape(own), 'task_broker_ready')).toBe(0);
      expect(sample(await scrape(own), 'task_broker_readiness_check', { check: 'database' })).toBe(0);
    } finally {
      health.close();
      await own.close();
    }
  });
});

describe('readiness without a policy, with an expired SVID, and while shutting down (PGlite)', () => {
  it('no policy: not ready, NOT_SERVING; a policy appearing makes it ready and SERVING', async () => {
    const policy = new MutablePolicySource();
    const t = await startTestBroker('pglite', { policy });
    const health = await healthClient(t);
    try {
      const { status, body } = await readyz(t);
      expect(status).toBe(503);
      expect(body.checks.policy).toMatchObject({ ok: false, reason: expect.stringMatching(/no policy is loaded/) });
      expect(body.checks.database?.ok).toBe(true);
      expect(await healthOfAll(health)).toEqual(noneServing);
      // Calls are still answered (policy denies them): health is advice to load balancers, not a gate.
      policy.set(policyOf(PERMISSIVE_POLICY));
      await eventually(() => t.broker.readiness.ready, 5_000, 'ready after the policy appeared');
      expect((await readyz(t)).status).toBe(200);
      expect(await healthOfAll(health)).toEqual(allServing);
    } finally {
      health.close();
      await t.close();
    }
  });

  it('an expired SVID: not ready, and the reason says when it expired', async () => {
    const t = await startTestBroker('pglite', { policy: new StaticPolicySource(policyOf(PERMISSIVE_POLICY)) });
    const health = await healthClient(t);
    try {
      expect((await readyz(t)).status).toBe(200);
      t.clock.advance(2 * 3600 * 1000); // past the test SVID's one hour
      await t.broker.readiness.evaluate();
      const { status, body } = await readyz(t);
      expect(status).toBe(503);
      expect(body.checks.svid).toMatchObject({ ok: false, reason: expect.stringMatching(/SVID expired at \d{4}-/) });
      const text = await scrape(t);
      expect(sample(text, 'task_broker_svid_remaining_seconds')).toBeLessThan(0);
    } finally {
      health.close();
      await t.close();
    }
  });

  it('shutting down: not ready at once, health NOT_SERVING, /healthz still 200', async () => {
    const t = await startTestBroker('pglite');
    const health = await healthClient(t);
    try {
      expect(await healthOfAll(health)).toEqual(allServing);
      t.broker.readiness.shutdown();
      const { status, body } = await readyz(t);
      expect(status).toBe(503);
      expect(body).toMatchObject({ status: 'not ready', shuttingDown: true });
      expect(await healthOfAll(health)).toEqual(noneServing);
      expect((await fetch(`${t.opsUrl}/healthz`)).status).toBe(200);
      // Evaluations no longer change the verdict.
      expect((await t.broker.readiness.evaluate()).ready).toBe(false);
    } finally {
      health.close();
      await t.close();
    }
  });
});
