/**
 * One structured log line per RPC (method, request id, caller SPIFFE ID, status, duration), and
 * no token ever in a log line, whatever happens to it.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { API, STRANGER, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { capturedLogger } from '../helpers/logs.js';

function spec(): CreateTaskRequest['spec'] {
  return { action: 'invoice.export', resources: ['invoices/2026-11'], audience: API, scopes: ['invoices:read'], ttl: { seconds: 600 } };
}

const withRequestId = (id: string) => {
  const md = new grpc.Metadata();
  md.set('x-request-id', id);
  return { metadata: md };
};

describe('RPC logs (PGlite, debug level)', () => {
  const { logger, lines } = capturedLogger('debug');
  let t: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  let stranger: BrokerClient;

  beforeAll(async () => {
    t = await startTestBroker('pglite', { logger });
    [worker, api, stranger] = await Promise.all([t.client(WORKER), t.client(API), t.client(STRANGER)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  const rpcLines = () => lines().filter((l) => l.msg === 'rpc');

  it('writes one line per RPC with method, request id, caller, status and duration', async () => {
    const before = rpcLines().length;
    const created = await worker.createTask({ spec: spec() }, withRequestId('req-ops-create-1'));
    await expect(stranger.getTask(created.task!.taskId, withRequestId('req-ops-probe-1'))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    const after = rpcLines().slice(before);
    expect(after).toHaveLength(2);
    expect(after[0]).toMatchObject({
      level: 'info',
      service: 'taskbroker.v1.TaskBroker',
      method: 'CreateTask',
      requestId: 'req-ops-create-1',
      caller: WORKER,
      code: 'OK',
      durationMs: expect.any(Number),
      peer: expect.stringMatching(/127\.0\.0\.1:\d+/),
    });
    expect(after[0]).not.toHaveProperty('details');
    expect(after[1]).toMatchObject({ method: 'GetTask', requestId: 'req-ops-probe-1', caller: STRANGER, code: 'NOT_FOUND', details: 'task not found' });
    // The request id in the log is the one on the audit trail.
    const trail = await verifyTaskTrail(t.broker.store.db, created.task!.taskId);
    expect(trail.trail.map((e) => e.requestId)).toEqual(['req-ops-create-1', 'req-ops-probe-1']);
  });

  it('a call without x-request-id gets a fresh id: the same in the log line, the response header and the audit event', async () => {
    const before = rpcLines().length;
    const headerId = await new Promise<string>((resolve, reject) => {
      const call = worker.raw.CreateTask({ spec: spec() }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err) => {
        if (err) reject(err);
      });
      call.on('metadata', (md: grpc.Metadata) => resolve(String(md.get('x-request-id')[0])));
    });
    await new Promise((r) => setTimeout(r, 100));
    const line = rpcLines().slice(before)[0];
    expect(headerId).toMatch(/^[0-9a-f-]{36}$/);
    expect(line).toMatchObject({ method: 'CreateTask', requestId: headerId, caller: WORKER, code: 'OK' });
  });

  it('WhoAmI, which records nothing, is logged too', async () => {
    const before = rpcLines().length;
    await api.whoAmI(withRequestId('req-ops-whoami'));
    expect(rpcLines().slice(before)).toEqual([expect.objectContaining({ method: 'WhoAmI', requestId: 'req-ops-whoami', caller: API, code: 'OK' })]);
  });

  it('a token run through IssueToken and VerifyToken (valid, mismatched, revoked, tampered) never appears in any log line', async () => {
    const created = await worker.createTask({ spec: spec() });
    const taskId = created.task!.taskId;
    const { token } = await worker.issueToken({ taskId }, withRequestId('req-ops-issue'));
    expect((await api.verifyToken({ token, presenterCertThumbprint: (await worker.whoAmI()).certThumbprint })).valid).toBe(true);
    expect((await stranger.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_AUDIENCE_MISMATCH');
    expect((await api.verifyToken({ token, presenterCertThumbprint: 'x'.repeat(43) })).reason).toBe('VERIFY_TOKEN_REASON_BINDING_MISMATCH');
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const tampered = `${header}.${payload}.${signature.slice(0, -4)}AAAA`;
    expect((await api.verifyToken({ token: tampered })).valid).toBe(false);
    await expect(api.verifyToken({ token: 'x'.repeat(20_000) })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await worker.completeTask(taskId, 'done');
    expect((await api.verifyToken({ token })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    await new Promise((r) => setTimeout(r, 100));

    const all = lines();
    expect(all.filter((l) => l.msg === 'rpc' && l.method === 'IssueToken' && l.requestId === 'req-ops-issue')).toHaveLength(1);
    expect(all.filter((l) => l.msg === 'rpc' && l.method === 'VerifyToken').length).toBeGreaterThanOrEqual(6);
    const text = all.map((l) => JSON.stringify(l)).join('\n');
    expect(text).not.toContain(token);
    expect(text).not.toContain(tampered);
    expect(text).not.toContain(signature);
    expect(text).not.toContain(payload);
    expect(text).not.toContain('x'.repeat(100));
  });

  it('the redact list is a second line of defence: secret-named fields are censored wherever they appear', () => {
    const captured = capturedLogger();
    captured.logger.info(
      { token: 'eyJ.secret.value', request: { token: 'eyJ.nested' }, identity: { keyPem: '-----BEGIN PRIVATE KEY-----' }, kek: 'c2VjcmV0' },
      'oops',
    );
    captured.logger.flush();
    const text = JSON.stringify(captured.lines());
    expect(text).not.toMatch(/eyJ\.|BEGIN PRIVATE KEY|c2VjcmV0/);
    expect(captured.lines()[0]).toMatchObject({ token: '[redacted]', request: { token: '[redacted]' }, identity: { keyPem: '[redacted]' }, kek: '[redacted]' });
  });
});
