/**
 * Tracing off (the default): no span is made and the OpenTelemetry SDK is never loaded, yet a
 * caller's valid `traceparent` is recorded: its trace id is in every audit event the call writes
 * (details.trace_id, under the event's hash; trace_id in the admin AuditEvent) and in the call's
 * log line, beside the request id, which stays as it was. A malformed traceparent is ignored: the
 * call succeeds and records no trace id. On PostgreSQL and PGlite.
 */
import * as grpc from '@grpc/grpc-js';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { AdminClient } from '../../src/client/admin-client.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { tracingState } from '../../src/observability/tracing.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { sample, scrape } from '../ops/helpers.js';
import { STORES } from '../helpers/db.js';
import { capturedLogger } from '../helpers/logs.js';
import { ADMIN } from '../helpers/policy.js';

function spec(ttlSeconds = 600): CreateTaskRequest['spec'] {
  return { action: 'invoice.export', resources: ['invoices/2026-11'], audience: API, scopes: ['invoices:read'], ttl: { seconds: ttlSeconds } };
}

let counter = 0;
/** A fresh valid trace context: its trace id and the traceparent carrying it. */
function newTrace(): { traceId: string; traceparent: string } {
  counter += 1;
  const traceId = `${'a1b2c3d4'.repeat(3)}${counter.toString(16).padStart(8, '0')}`;
  return { traceId, traceparent: `00-${traceId}-00f067aa0ba902b7-01` };
}

function withHeaders(headers: Record<string, string | string[]>) {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(headers)) for (const value of [v].flat()) md.add(k, value);
  return { metadata: md };
}

describe.each(STORES)('trace ids in the audit trail, tracing off (%s)', (kind) => {
  const { logger, lines } = capturedLogger();
  let t: TestBroker;
  let worker: BrokerClient;
  let admin: AdminClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, { logger });
    [worker, admin] = await Promise.all([t.client(WORKER), t.adminClient(ADMIN)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  const trailOf = async (taskId: string) => {
    const check = await verifyTaskTrail(t.broker.store.db, taskId);
    expect(check.ok, check.problem).toBe(true);
    return check.trail;
  };
  const rpcLine = (requestId: string) => lines().find((l) => l.msg === 'rpc' && l.requestId === requestId);

  it('makes no span and never loads the SDK', () => {
    expect(tracingState()).toEqual({ enabled: false, source: undefined, sdkLoaded: false });
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    expect(loaded.filter((path) => /@opentelemetry[\\/]sdk-/.test(path))).toEqual([]);
  });

  it("records a valid traceparent's trace id in the event, the admin view and the log line; the request id stays", async () => {
    const { traceId, traceparent } = newTrace();
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent, tracestate: 'vendor=x', 'x-request-id': `req-${kind}-traced` }));
    const [event] = await trailOf(created.task!.taskId);
    expect(event).toMatchObject({ type: 'task.created', requestId: `req-${kind}-traced`, details: expect.objectContaining({ trace_id: traceId }) });

    const trail = await admin.getAuditTrail(created.task!.taskId);
    expect(trail.events[0]).toMatchObject({ eventType: 'task.created', requestId: `req-${kind}-traced`, traceId });
    expect(trail.chain?.ok).toBe(true);

    expect(rpcLine(`req-${kind}-traced`)).toMatchObject({ method: 'CreateTask', code: 'OK', trace_id: traceId });
    // No span of the broker's own: nothing to name.
    expect(rpcLine(`req-${kind}-traced`)).not.toHaveProperty('span_id');
  });

  it('each call on a task records its own trace id, and a call without one records none', async () => {
    const first = newTrace();
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent: first.traceparent }));
    const taskId = created.task!.taskId;
    const second = newTrace();
    await worker.getTask(taskId, withHeaders({ traceparent: second.traceparent }));
    await worker.getTask(taskId);
    const third = newTrace();
    await worker.issueToken({ taskId }, withHeaders({ traceparent: third.traceparent }));
    const fourth = newTrace();
    await worker.completeTask(taskId, 'done', withHeaders({ traceparent: fourth.traceparent }));
    const trail = await trailOf(taskId);
    expect(trail.map((e) => [e.type, e.details.trace_id])).toEqual([
      ['task.created', first.traceId],
      ['task.polled', second.traceId],
      ['task.polled', undefined],
      ['token.issued', third.traceId],
      ['task.completed', fourth.traceId],
    ]);
    const view = await admin.getAuditTrail(taskId);
    expect(view.events.map((e) => e.traceId)).toEqual([first.traceId, second.traceId, '', third.traceId, fourth.traceId]);
  });

  it.each([
    ['upper case', (id: string) => `00-${id.toUpperCase()}-00F067AA0BA902B7-01`],
    ['an all-zero trace id', () => `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`],
    ['version ff', (id: string) => `ff-${id}-00f067aa0ba902b7-01`],
    ['garbage', () => 'not a traceparent'],
  ])('ignores a malformed traceparent (%s): the call succeeds and records no trace id', async (what, make) => {
    const requestId = `req-${kind}-bad-${what.replace(/\W/g, '')}`;
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent: make(newTrace().traceId), 'x-request-id': requestId }));
    const [event] = await trailOf(created.task!.taskId);
    expect(event!.requestId).toBe(requestId);
    expect(event!.details).not.toHaveProperty('trace_id');
    expect((await admin.getAuditTrail(created.task!.taskId)).events[0]!.traceId).toBe('');
    expect(rpcLine(requestId)).toMatchObject({ code: 'OK' });
    expect(rpcLine(requestId)).not.toHaveProperty('trace_id');
  });

  it('two traceparents are as good as none', async () => {
    const a = newTrace();
    const b = newTrace();
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent: [a.traceparent, b.traceparent] }));
    expect((await trailOf(created.task!.taskId))[0]!.details).not.toHaveProperty('trace_id');
  });

  it('concurrent calls that share a write batch keep their own trace ids (or none)', async () => {
    const traces = Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? newTrace() : undefined));
    const batches = async () => sample(await scrape(t), 'task_broker_db_write_batch_operations_count') ?? 0;
    const batchesBefore = await batches();
    const created = await Promise.all(traces.map((trace) => worker.createTask({ spec: spec() }, trace ? withHeaders({ traceparent: trace.traceparent }) : {})));
    // They did share statements: fewer write batches than calls (traced and untraced side by side).
    expect((await batches()) - batchesBefore).toBeLessThan(traces.length);
    for (const [i, res] of created.entries()) {
      const [event] = await trailOf(res.task!.taskId);
      expect(event!.details.trace_id, `call ${i}`).toBe(traces[i]?.traceId);
    }
  });

  it("an admin's call records its trace id in every event it writes: the revoked task, the task delegated from it, the admin's own record", async () => {
    const parent = await worker.createTask({ spec: spec() });
    const child = await worker.delegateTask({ parentTaskId: parent.task!.taskId, delegatee: API, spec: {} });
    const revoke = newTrace();
    await admin.revokeTask(parent.task!.taskId, 'incident', withHeaders({ traceparent: revoke.traceparent }));
    const parentTrail = await trailOf(parent.task!.taskId);
    expect(parentTrail.map((e) => [e.type, e.details.trace_id])).toEqual([
      ['task.created', undefined],
      ['task.delegated', undefined],
      ['task.revoked', revoke.traceId],
    ]);
    // The child's end is written by the database (tb_end_task), not by the broker: the trace id reaches it too.
    expect((await trailOf(child.task!.taskId)).map((e) => [e.type, e.details.trace_id])).toEqual([
      ['task.created', undefined],
      ['task.revoked', revoke.traceId],
    ]);

    const read = newTrace();
    await admin.getAuditTrail(parent.task!.taskId, withHeaders({ traceparent: read.traceparent }));
    const adminChain = await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`);
    expect(adminChain.ok).toBe(true);
    expect(adminChain.trail.at(-1)).toMatchObject({ type: 'admin.audit_read', details: expect.objectContaining({ trace_id: read.traceId }) });
  });

  it("an expiry on the way of an admin's call is in that call's trace", async () => {
    const created = await worker.createTask({ spec: spec(60) });
    t.clock.advance(120_000);
    const revoke = newTrace();
    await expect(admin.revokeTask(created.task!.taskId, 'late', withHeaders({ traceparent: revoke.traceparent }))).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
    });
    const trail = await trailOf(created.task!.taskId);
    expect(trail.at(-1)).toMatchObject({ type: 'task.expired', details: expect.objectContaining({ trace_id: revoke.traceId }) });
    // The workload's next call without a trace context records none, on the same connection.
    await worker.getTask(created.task!.taskId);
    expect((await trailOf(created.task!.taskId)).at(-1)!.details).not.toHaveProperty('trace_id');
  });

  it('the module is still off, the SDK still not loaded', () => {
    expect(tracingState()).toEqual({ enabled: false, source: undefined, sdkLoaded: false });
  });
});
