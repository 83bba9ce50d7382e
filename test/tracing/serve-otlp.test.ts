/**
 * The real `task-broker serve` process with tracing turned on by the standard environment
 * (OTEL_TRACES_EXPORTER=otlp, OTLP/HTTP JSON to an in-test receiver): a CreateTask with a
 * traceparent reaches the receiver as a SERVER span in the caller's trace, with its database span
 * under it, from NodeSDK's batch processor. An OTEL_* value the broker does not know stops the
 * start with a clear message. (Runs dist/: build first.)
 */
import * as grpc from '@grpc/grpc-js';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDirForFile } from '../helpers/cleanup.js';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { createServePki, randomKek, startServe, type ServePki } from '../helpers/serve-process.js';

const TD = 'example.org';
const WORKER = `spiffe://${TD}/ns/jobs/sa/worker`;
const AUDIENCE = `spiffe://${TD}/ns/billing/sa/invoice-api`;
const POLICY = `
version: 1
rules:
  - name: workers
    callers:
      spiffe_ids: ["spiffe://${TD}/ns/jobs/**"]
    actions: ["invoice.export"]
    audiences: ["spiffe://${TD}/ns/billing/**"]
    scopes: ["invoices:read"]
`;
const TRACE = '0af7651916cd43dd8448eb211c80319c';
const CALLER_SPAN = 'b7ad6b7169203331';

/** A span as OTLP/JSON carries it (the fields the test reads). */
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: Array<{ key: string; value: Record<string, unknown> }>;
  resource: Record<string, unknown>;
}

/** An OTLP/HTTP trace receiver: collects the spans of every export and tells waiters as they arrive. */
class Receiver {
  readonly spans: OtlpSpan[] = [];
  readonly #waiters = new Set<() => void>();
  readonly #server: Server;

  constructor() {
    this.#server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.url === '/v1/traces' && req.headers['content-type']?.includes('application/json')) {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
            resourceSpans?: Array<{ resource?: { attributes?: OtlpSpan['attributes'] }; scopeSpans?: Array<{ spans?: Array<Omit<OtlpSpan, 'resource'>> }> }>;
          };
          for (const rs of body.resourceSpans ?? []) {
            const resource = valuesOf(rs.resource?.attributes ?? []);
            for (const ss of rs.scopeSpans ?? []) for (const span of ss.spans ?? []) this.spans.push({ ...span, resource });
          }
          for (const wake of this.#waiters) wake();
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}/v1/traces`;
  }

  /** The first span received that matches, once it is there (or an error naming what did arrive). */
  waitFor(match: (s: OtlpSpan) => boolean, what: string, timeoutMs = 30_000): Promise<OtlpSpan> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.spans.find(match);
        if (!found) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(found);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`${what}: not received within ${timeoutMs} ms; received ${JSON.stringify(this.spans.map((s) => s.name))}`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** OTLP/JSON attributes as a plain object (stringValue, intValue, ...). */
function valuesOf(attributes: OtlpSpan['attributes']): Record<string, unknown> {
  return Object.fromEntries(attributes.map(({ key, value }) => [key, Object.values(value)[0]]));
}

const dir = tempDirForFile('tb-otlp-');
/** Every serve of this file runs on one database: one key-encryption key. */
const kek = randomKek();

describe('task-broker serve exporting traces over OTLP (PostgreSQL)', () => {
  let pki: ServePki;
  let database: TestDatabase;
  const receiver = new Receiver();
  let endpoint: string;

  beforeAll(async () => {
    [pki, database, endpoint] = await Promise.all([createServePki(join(dir(), 'pki'), TD), createTestDatabase('postgres'), receiver.listen()]);
  });
  afterAll(async () => {
    await receiver.close();
    await database?.drop();
  });

  it("sends the SERVER span of a call with a traceparent, in the caller's trace, and its database span under it", { timeout: 120_000 }, async () => {
    const serve = await startServe({
      pki,
      databaseUrl: database.url,
      kek,
      policyYaml: POLICY,
      env: {
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
        OTEL_BSP_SCHEDULE_DELAY: '50',
        OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=test',
      },
    });
    try {
      expect(await serve.cli.waitForLog((l) => l.msg === 'tracing on (OpenTelemetry)')).toMatchObject({ reason: 'OTEL_TRACES_EXPORTER=otlp' });
      const worker = await serve.client(WORKER);
      const metadata = new grpc.Metadata();
      metadata.set('traceparent', `00-${TRACE}-${CALLER_SPAN}-01`);
      const created = await worker.createTask(
        { spec: { action: 'invoice.export', resources: ['invoices/2026-11'], audience: AUDIENCE, scopes: ['invoices:read'], ttl: { seconds: 600 } } },
        { metadata },
      );
      expect(created.task?.taskId).toMatch(/^tsk_/);

      const server = await receiver.waitFor((s) => s.traceId === TRACE && s.name === 'taskbroker.v1.TaskBroker/CreateTask', 'the CreateTask server span');
      expect(server.kind).toBe(2); // SPAN_KIND_SERVER
      expect(server.parentSpanId).toBe(CALLER_SPAN);
      expect(valuesOf(server.attributes)).toMatchObject({
        'rpc.system': 'grpc',
        'rpc.service': 'taskbroker.v1.TaskBroker',
        'rpc.method': 'CreateTask',
        'rpc.grpc.status_code': 0,
        'network.peer.address': '127.0.0.1',
      });
      // NodeSDK's resource: the broker's service name by default, the environment's attributes added.
      expect(server.resource).toMatchObject({ 'service.name': 'task-broker', 'deployment.environment.name': 'test' });

      const db = await receiver.waitFor((s) => s.traceId === TRACE && s.name === 'tb_apply', 'the CreateTask database span');
      expect(db.kind).toBe(3); // SPAN_KIND_CLIENT
      expect(db.parentSpanId).toBe(server.spanId);
      expect(valuesOf(db.attributes)).toMatchObject({ 'db.system': 'postgresql', 'db.operation.name': 'tb_apply', 'taskbroker.batch.size': 1 });
    } finally {
      expect(await serve.stop()).toBe(0);
    }
    expect(serve.cli.stdout()).toContain('"msg":"stopped"');
  });

  it('does not linger on a collector that never answers: the spans it holds are given up within the shutdown bound', { timeout: 120_000 }, async () => {
    // Accepts connections and requests, answers none.
    const sockets = new Set<Socket>();
    const silent = createServer(() => undefined);
    silent.on('connection', (s) => sockets.add(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    let requests = 0;
    silent.on('request', () => (requests += 1));
    try {
      const serve = await startServe({
        pki,
        databaseUrl: database.url,
        kek,
        policyYaml: POLICY,
        // Tracing on by the endpoint alone (the SDK's default schedule: the span waits for the shutdown's flush).
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(silent.address() as AddressInfo).port}`, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' },
      });
      expect(await serve.cli.waitForLog((l) => l.msg === 'tracing on (OpenTelemetry)')).toMatchObject({ reason: 'OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP)' });
      await (await serve.client(WORKER)).whoAmI();
      const stopping = Date.now();
      expect(await serve.stop()).toBe(0);
      // The export was tried, at shutdown, and given up after the 5 s bound (the SDK's own default would hold the exit for 10 s).
      expect(requests).toBeGreaterThan(0);
      expect(Date.now() - stopping).toBeLessThan(9_500);
      expect(serve.cli.stdout()).toContain('"msg":"stopped"');
      expect(serve.cli.stdout()).toMatch(/"msg":"tracing: (spans not exported within the shutdown bound were dropped|the SDK did not shut down cleanly)"/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it('refuses to start with an OTEL_* value it does not know, and says which', { timeout: 120_000 }, async () => {
    const failed = startServe({ pki, databaseUrl: database.url, kek, policyYaml: POLICY, env: { OTEL_TRACES_EXPORTER: 'otlpp' } });
    await expect(failed).rejects.toThrow(/OTEL_TRACES_EXPORTER: unknown exporter "otlpp" \(otlp, console, zipkin or none\)/);
  });
});
