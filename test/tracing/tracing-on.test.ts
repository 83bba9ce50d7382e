/**
 * Tracing on, with an in-memory exporter put in through the module's test hook (production uses
 * NodeSDK: serve-otlp.test.ts). One CreateTask with a traceparent: a SERVER span in the caller's
 * trace, child of the caller's span, with the RPC attributes; a CLIENT span for its database round
 * trip (tb_apply through the write batcher), child of the server span, with the batch size; the
 * trace id in the task's audit event and in the log line. On PostgreSQL and PGlite.
 */
import * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { AdminClient } from '../../src/client/admin-client.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { silentLogger } from '../../src/observability/logger.js';
import { startDatabaseSpan, startServerSpan, stopTracing, tracingState, useTracerProviderForTests } from '../../src/observability/tracing.js';
import { API, startTestBroker, STRANGER, WORKER, type TestBroker } from '../helpers/broker.js';
import { STORES } from '../helpers/db.js';
import { capturedLogger } from '../helpers/logs.js';
import { ADMIN } from '../helpers/policy.js';

const CREATE = 'taskbroker.v1.TaskBroker/CreateTask';
const CALLER_SPAN = '00f067aa0ba902b7';

function spec(): CreateTaskRequest['spec'] {
  return { action: 'invoice.export', resources: ['invoices/2026-11'], audience: API, scopes: ['invoices:read'], ttl: { seconds: 600 } };
}

let counter = 0;
function newTraceId(): string {
  counter += 1;
  return `${'5eed0f00'.repeat(3)}${counter.toString(16).padStart(8, '0')}`;
}

function withHeaders(headers: Record<string, string>) {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(headers)) md.set(k, v);
  return { metadata: md };
}

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

/** Every finished span of `traceId` (a server span ends before its status goes out, so a call's spans are in once its answer came). */
async function spansOf(traceId: string): Promise<ReadableSpan[]> {
  await provider.forceFlush();
  return exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
}

function one(spans: ReadableSpan[], name: string): ReadableSpan {
  const found = spans.filter((s) => s.name === name);
  expect(
    found.map((s) => s.name),
    `one span named ${name}`,
  ).toEqual([name]);
  return found[0]!;
}

/** Nanoseconds since the epoch of an HrTime. */
const ns = ([s, n]: [number, number]) => BigInt(s) * 1_000_000_000n + BigInt(n);

beforeAll(async () => {
  await useTracerProviderForTests(provider);
});
afterAll(async () => {
  await stopTracing(silentLogger());
});

describe.each(STORES)('tracing on, in-memory exporter (%s)', (kind) => {
  const { logger, lines } = capturedLogger();
  let t: TestBroker;
  let worker: BrokerClient;
  let stranger: BrokerClient;
  let admin: AdminClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, { logger });
    [worker, stranger, admin] = await Promise.all([t.client(WORKER), t.client(STRANGER), t.adminClient(ADMIN)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('is on through the test hook, without the SDK', () => {
    expect(tracingState()).toEqual({ enabled: true, source: 'test', sdkLoaded: false });
  });

  it("one CreateTask with a traceparent: a SERVER span under the caller's, a database span under it, the trace id on the audit record", async () => {
    const traceId = newTraceId();
    const requestId = `req-${kind}-create`;
    const created = await worker.createTask(
      { spec: spec() },
      withHeaders({ traceparent: `00-${traceId}-${CALLER_SPAN}-01`, tracestate: 'vendor=abc', 'x-request-id': requestId }),
    );
    const spans = await spansOf(traceId);

    const server = one(spans, CREATE);
    expect(server.kind).toBe(SpanKind.SERVER);
    expect(server.parentSpanContext).toMatchObject({ traceId, spanId: CALLER_SPAN, isRemote: true });
    expect(server.spanContext().traceState?.get('vendor')).toBe('abc');
    expect(server.attributes).toEqual({
      'rpc.system': 'grpc',
      'rpc.service': 'taskbroker.v1.TaskBroker',
      'rpc.method': 'CreateTask',
      'rpc.grpc.status_code': grpc.status.OK,
      'network.peer.address': '127.0.0.1',
      'network.peer.port': expect.any(Number),
    });
    expect(server.status.code).toBe(SpanStatusCode.UNSET);

    const db = one(spans, 'tb_apply');
    expect(db.kind).toBe(SpanKind.CLIENT);
    expect(db.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    expect(db.attributes).toMatchObject({
      'db.system': 'postgresql',
      'db.system.name': 'postgresql',
      'db.operation.name': 'tb_apply',
      'db.stored_procedure.name': 'tb_apply',
      'taskbroker.operation': 'create',
      'taskbroker.batch.size': expect.any(Number),
    });
    expect(db.events.map((e) => e.name)).toEqual(['statement sent']);
    expect(db.status.code).toBe(SpanStatusCode.UNSET);
    // The database span lies within the server span.
    expect(ns(db.startTime)).toBeGreaterThanOrEqual(ns(server.startTime));
    expect(ns(db.endTime)).toBeLessThanOrEqual(ns(server.endTime));

    // The audit event names the trace (through the admin API and in the database), beside the unchanged request id.
    const trail = await admin.getAuditTrail(created.task!.taskId);
    expect(trail.events[0]).toMatchObject({ eventType: 'task.created', requestId, traceId });
    const stored = await verifyTaskTrail(t.broker.store.db, created.task!.taskId);
    expect(stored.ok).toBe(true);
    expect(stored.trail[0]!.details.trace_id).toBe(traceId);

    expect(lines().find((l) => l.msg === 'rpc' && l.requestId === requestId)).toMatchObject({
      method: 'CreateTask',
      trace_id: traceId,
      span_id: server.spanContext().spanId,
    });
  });

  it('IssueToken for an unknown task: the read and the recorded denial are its database spans; NOT_FOUND is not a server error', async () => {
    const traceId = newTraceId();
    const unknown = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';
    await expect(stranger.issueToken({ taskId: unknown }, withHeaders({ traceparent: `00-${traceId}-${CALLER_SPAN}-01` }))).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });
    const spans = await spansOf(traceId);
    const server = one(spans, 'taskbroker.v1.TaskBroker/IssueToken');
    expect(server.attributes['rpc.grpc.status_code']).toBe(grpc.status.NOT_FOUND);
    expect(server.status.code).toBe(SpanStatusCode.UNSET);
    const read = one(spans, 'SELECT tasks');
    expect(read.attributes).toMatchObject({ 'db.system': 'postgresql', 'db.operation.name': 'SELECT', 'db.collection.name': 'tasks' });
    const denial = one(spans, 'tb_apply');
    expect(denial.attributes['taskbroker.operation']).toBe('event');
    for (const child of [read, denial]) expect(child.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    // The denial on the stranger's own chain carries the trace id.
    const chain = await verifyTaskTrail(t.broker.store.db, `actor:${STRANGER}`);
    expect(chain.trail.at(-1)).toMatchObject({ type: 'access.denied', details: expect.objectContaining({ trace_id: traceId }) });
  });

  it('a call without a traceparent gets a root server span, and its trace id is the one recorded', async () => {
    const requestId = `req-${kind}-root`;
    const created = await worker.createTask({ spec: spec() }, withHeaders({ 'x-request-id': requestId }));
    const [event] = (await verifyTaskTrail(t.broker.store.db, created.task!.taskId)).trail;
    const traceId = event!.details.trace_id as string;
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    const spans = await spansOf(traceId);
    const server = one(spans, CREATE);
    expect(server.parentSpanContext).toBeUndefined();
    expect(one(spans, 'tb_apply').parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    expect(lines().find((l) => l.msg === 'rpc' && l.requestId === requestId)).toMatchObject({ trace_id: traceId });
  });

  it('a malformed traceparent is ignored: the call succeeds as a root span, whose trace id is the one recorded', async () => {
    const malformed = newTraceId();
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent: `00-${malformed.toUpperCase()}-${CALLER_SPAN}-01` }));
    expect(await spansOf(malformed)).toEqual([]);
    const traceId = (await verifyTaskTrail(t.broker.store.db, created.task!.taskId)).trail[0]!.details.trace_id as string;
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(traceId).not.toBe(malformed);
    expect(one(await spansOf(traceId), CREATE).parentSpanContext).toBeUndefined();
  });

  it("a caller's unsampled trace is not exported, and still recorded", async () => {
    const traceId = newTraceId();
    const created = await worker.createTask({ spec: spec() }, withHeaders({ traceparent: `00-${traceId}-${CALLER_SPAN}-00` }));
    expect(await spansOf(traceId)).toEqual([]);
    expect((await verifyTaskTrail(t.broker.store.db, created.task!.taskId)).trail[0]!.details.trace_id).toBe(traceId);
  });

  it('concurrent calls: each gets its own database span under its own server span, with the size of the batch it went in', async () => {
    const traceIds = Array.from({ length: 24 }, () => newTraceId());
    await Promise.all(traceIds.map((id) => worker.createTask({ spec: spec() }, withHeaders({ traceparent: `00-${id}-${CALLER_SPAN}-01` }))));
    const sizes: number[] = [];
    for (const id of traceIds) {
      const spans = await spansOf(id);
      const server = one(spans, CREATE);
      const db = one(spans, 'tb_apply');
      expect(db.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
      const size = db.attributes['taskbroker.batch.size'] as number;
      sizes.push(size);
      // db.operation.batch.size only for a real batch (the conventions: never 1).
      expect(db.attributes['db.operation.batch.size']).toBe(size > 1 ? size : undefined);
    }
    expect(Math.max(...sizes), `batch sizes ${sizes.join(',')}`).toBeGreaterThan(1);
  });

  it('an admin call is traced too, and its audit record carries the trace id', async () => {
    const created = await worker.createTask({ spec: spec() });
    const traceId = newTraceId();
    await admin.revokeTask(created.task!.taskId, 'incident', withHeaders({ traceparent: `00-${traceId}-${CALLER_SPAN}-01` }));
    const server = one(await spansOf(traceId), 'taskbroker.v1.TaskBrokerAdmin/RevokeTask');
    expect(server.attributes).toMatchObject({ 'rpc.service': 'taskbroker.v1.TaskBrokerAdmin', 'rpc.method': 'RevokeTask', 'rpc.grpc.status_code': 0 });
    const trail = await admin.getAuditTrail(created.task!.taskId);
    expect(trail.events.at(-1)).toMatchObject({ eventType: 'task.revoked', traceId });
  });
});

describe('span status (tracing on)', () => {
  const TRACE = 'feedfacefeedfacefeedfacefeedface';
  const parent = { traceId: TRACE, spanId: CALLER_SPAN, sampled: true };

  it('a server span is an error for the codes that are the server’s (UNAVAILABLE), not for the caller’s (INVALID_ARGUMENT)', async () => {
    for (const [code, name] of [
      [grpc.status.UNAVAILABLE, 'UNAVAILABLE'],
      [grpc.status.INTERNAL, 'INTERNAL'],
      [grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT'],
      [grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED'],
    ] as const) {
      const span = startServerSpan({ service: 'taskbroker.v1.TaskBroker', method: `Status${name}`, peer: '[::1]:4242', startTime: Date.now(), parent });
      span!.end(code, name, 'what happened');
    }
    const spans = await spansOf(TRACE);
    const status = (name: string) => spans.find((s) => s.name === `taskbroker.v1.TaskBroker/Status${name}`)!.status;
    expect(status('UNAVAILABLE')).toEqual({ code: SpanStatusCode.ERROR, message: 'UNAVAILABLE: what happened' });
    expect(status('INTERNAL')).toMatchObject({ code: SpanStatusCode.ERROR });
    expect(status('INVALID_ARGUMENT')).toEqual({ code: SpanStatusCode.UNSET });
    expect(status('PERMISSION_DENIED')).toEqual({ code: SpanStatusCode.UNSET });
    expect(spans.find((s) => s.name.endsWith('StatusUNAVAILABLE'))!.attributes).toMatchObject({ 'network.peer.address': '::1', 'network.peer.port': 4242 });
  });

  it('a database span that failed is an error with its message', async () => {
    const span = startDatabaseSpan(parent, 'tb_apply', { 'db.operation.name': 'tb_apply' });
    span!.sent(3);
    span!.sent(1);
    span!.end(new Error('connection terminated'));
    const failed = (await spansOf(TRACE)).find((s) => s.name === 'tb_apply')!;
    expect(failed.status).toEqual({ code: SpanStatusCode.ERROR, message: 'connection terminated' });
    // Run again alone after its batch failed: the last statement's size, and how many it took.
    expect(failed.attributes).toMatchObject({ 'taskbroker.batch.size': 1, 'taskbroker.batch.statements': 2, 'error.type': 'Error' });
    expect(failed.attributes).not.toHaveProperty('db.operation.batch.size');
  });

  it('no database span without a call to hang it under', () => {
    expect(startDatabaseSpan(undefined, 'tb_apply', {})).toBeUndefined();
  });
});
