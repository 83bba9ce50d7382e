/**
 * Graceful shutdown in process: SvidServer.shutdown lets calls in flight on open HTTP/2
 * connections finish, takes no new connections or calls, and cancels what is left at the
 * deadline; a whole broker drains a burst of real calls before it releases the database.
 */
import * as grpc from '@grpc/grpc-js';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { whoAmIHandler } from '../../src/api/task-broker-service.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { brokerProto } from '../../src/protocol/proto.js';
import { StaticX509SvidSource } from '../../src/spiffe/x509-source.js';
import { SvidServer } from '../../src/transport/svid-server.js';
import { API, startTestBroker, WORKER } from '../helpers/broker.js';
import { capturedLogger } from '../helpers/logs.js';
import { brokerIdentity, bundleSet, pemOf, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';

const BROKER = 'spiffe://a.test/task-broker';

interface SlowServer {
  server: SvidServer;
  port: number;
  received: () => number;
}

/** A real SvidServer whose WhoAmI takes `delayMs`. */
async function slowServer(a: TrustDomainPki, delayMs: number): Promise<SlowServer> {
  const { logger } = capturedLogger();
  const server = new SvidServer({ bundles: bundleSet(a), identity: new StaticX509SvidSource(await brokerIdentity(a)), logger });
  const whoAmI = whoAmIHandler({ logger });
  let received = 0;
  server.grpc.addService(brokerProto().taskbroker.v1.TaskBroker.service, {
    WhoAmI: (call: Parameters<typeof whoAmI>[0], cb: Parameters<typeof whoAmI>[1]) => {
      received += 1;
      setTimeout(() => whoAmI(call, cb), delayMs);
    },
  });
  const port = await server.listen('127.0.0.1', 0);
  return { server, port, received: () => received };
}

async function clientOf(a: TrustDomainPki, port: number, spiffeId: string): Promise<BrokerClient> {
  const svid = await pemOf(await mintX509Svid(a.root, spiffeId));
  return new BrokerClient({
    address: `127.0.0.1:${port}`,
    credentials: svidChannelCredentials({ ...svid, bundle: a.root.pem, serverId: BROKER }),
    channelOptions: { ...svidChannelOptions(), 'grpc.enable_retries': 0 },
  });
}

const settle = (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (err: grpc.ServiceError) => grpc.status[err.code] ?? String(err.code),
  );

async function until(fn: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const toClose: Array<() => unknown> = [];
afterEach(async () => {
  for (const fn of toClose.splice(0).reverse()) await fn();
});

describe('SvidServer.shutdown', () => {
  it('lets every call in flight on open connections finish, then refuses new calls and connections', async () => {
    const a = await trustDomainPki('a.test');
    const s = await slowServer(a, 400);
    toClose.push(() => s.server.shutdown(100));
    const clients = await Promise.all([1, 2, 3].map((i) => clientOf(a, s.port, `spiffe://a.test/w${i}`)));
    toClose.push(() => clients.forEach((c) => c.close()));
    await Promise.all(clients.map((c) => c.whoAmI())); // connections open and verified

    const calls = clients.flatMap((c) => Array.from({ length: 20 }, () => settle(c.whoAmI())));
    await until(() => s.received() === 3 + 60);
    const started = Date.now();
    const shutdown = s.server.shutdown(5_000);
    expect(s.server.shuttingDown).toBe(true);
    // Open connections take no new calls once shutdown began.
    const late = settle(clients[0]!.whoAmI({ deadlineMs: 3_000 }));
    expect(await Promise.all(calls)).toEqual(Array(60).fill('OK'));
    await shutdown;
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(await late).toBe('UNAVAILABLE');
    expect(s.received()).toBe(63);
    expect(s.server.connectionCount).toBe(0);
    // And the listener is gone.
    const fresh = await clientOf(a, s.port, 'spiffe://a.test/late');
    toClose.push(() => fresh.close());
    expect(await settle(fresh.whoAmI({ deadlineMs: 2_000 }))).toBe('UNAVAILABLE');
    // Calling it again is harmless.
    await s.server.shutdown(10);
  });

  it('drops a connection accepted before shutdown whose TLS handshake completes after it', { timeout: 20_000 }, async () => {
    const a = await trustDomainPki('a.test');
    const s = await slowServer(a, 2_000);
    const client = await clientOf(a, s.port, 'spiffe://a.test/w');
    toClose.push(() => client.close());
    let finishedAt = 0;
    const running = settle(client.whoAmI({ deadlineMs: 10_000 })).then((code) => ((finishedAt = Date.now()), code)); // keeps the drain going
    await until(() => s.received() === 1);
    const tcp = connect(s.port, '127.0.0.1');
    await new Promise((resolve) => tcp.once('connect', resolve));
    await new Promise((r) => setTimeout(r, 50)); // accepted by the server
    const shutdown = s.server.shutdown(5_000);
    const svid = await pemOf(await mintX509Svid(a.root, 'spiffe://a.test/latecomer'));
    const tls = tlsConnect({
      socket: tcp,
      ca: a.root.pem,
      cert: svid.certChainPem,
      key: svid.keyPem,
      ALPNProtocols: ['h2'],
      servername: 'task-broker',
      checkServerIdentity: () => undefined,
    });
    tls.on('error', () => undefined);
    await new Promise((resolve) => tls.once('secureConnect', resolve));
    const closedAt = await new Promise<number>((resolve) => tls.once('close', () => resolve(Date.now())));
    expect(await running).toBe('OK'); // the call in flight still finished, after the latecomer was dropped
    expect(closedAt).toBeLessThan(finishedAt);
    await shutdown;
  });

  it('cancels what is still running at the deadline and resolves soon after', async () => {
    const a = await trustDomainPki('a.test');
    const s = await slowServer(a, 5_000);
    const client = await clientOf(a, s.port, 'spiffe://a.test/w');
    toClose.push(() => client.close());
    const call = settle(client.whoAmI({ deadlineMs: 10_000 }));
    await until(() => s.received() === 1);
    const started = Date.now();
    await s.server.shutdown(300);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(['CANCELLED', 'UNAVAILABLE', 'INTERNAL']).toContain(await call);
  });
});

describe('a whole broker closing during a burst (PGlite)', () => {
  it('finishes every call it received before it releases the database', async () => {
    const { logger, lines } = capturedLogger();
    // 50 calls at once per workload: over the per-caller admission limit (32) by design, lifted here.
    const t = await startTestBroker('pglite', { logger, admission: { maxInFlightPerCaller: 100 } });
    toClose.push(() => t.close());
    const workers = await Promise.all([1, 2, 3, 4].map((i) => t.client(`${WORKER}-${i}`)));
    const spec: CreateTaskRequest['spec'] = { action: 'invoice.export', resources: ['r'], audience: API, scopes: ['invoices:read'], ttl: { seconds: 600 } };
    const tasks = await Promise.all(workers.map((w) => w.createTask({ spec }).then((r) => ({ w, taskId: r.task!.taskId }))));
    const calledBefore = lines().filter((l) => l.msg === 'rpc').length;

    // 200 calls at once: CreateTask and IssueToken, spread over four connections.
    const burst = Array.from({ length: 200 }, (_, i) => {
      const { w, taskId } = tasks[i % tasks.length]!;
      return settle(i % 2 === 0 ? w.createTask({ spec }, { deadlineMs: 30_000 }) : w.issueToken({ taskId }, { deadlineMs: 30_000 }));
    });
    const inFlight = async () => (await t.broker.metrics.rpcInFlight.get()).values.reduce((n, v) => n + v.value, 0);
    const done = () => lines().filter((l) => l.msg === 'rpc').length - calledBefore;
    for (;;) {
      if ((await inFlight()) + done() >= 200) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    const closing = t.broker.close(20_000);
    const completedBeforeClose = done();
    expect(await Promise.all(burst)).toEqual(Array(200).fill('OK'));
    await closing;
    expect(completedBeforeClose).toBeLessThan(200); // the close really overlapped the burst
    expect(done()).toBe(200);
  });
});
