/**
 * The real binary under SIGTERM: `task-broker serve` on embedded PGlite, a burst of 200
 * concurrent CreateTask and IssueToken calls over mTLS, SIGTERM while they are in flight. Every
 * call the broker received completes successfully, /readyz turns 503 during the drain, and the
 * process exits 0 with its 'stopped' line. (Runs dist/: build first.)
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { tempDirForFile } from '../helpers/cleanup.js';
import { runCli, startCli } from '../helpers/cli.js';
import { devCaServeEnv, devCaSvid } from '../helpers/dev-ca-files.js';
import { taskSpec } from '../faults/fixtures.js';
import { createTestDatabase } from '../helpers/db.js';
import { createServePki, startServe, type ServeProcess } from '../helpers/serve-process.js';

const TD = 'example.org';
const BROKER_ID = `spiffe://${TD}/task-broker`;
const AUDIENCE = `spiffe://${TD}/ns/billing/sa/invoice-api`;
const BURST = 200;

const POLICY = `
version: 1
admins:
  - spiffe://${TD}/ns/platform/sa/admin
rules:
  - name: burst-workers
    callers:
      spiffe_ids: ["spiffe://${TD}/ns/burst/**"]
    actions: ["invoice.export"]
    audiences: ["spiffe://${TD}/ns/billing/**"]
    scopes: ["invoices:read"]
`;

const dir = tempDirForFile('tb-sigterm-');

/** Sum of every sample of `name` whose labels include `labels`. */
function total(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('task-broker serve under SIGTERM', () => {
  it(`drains a burst of ${BURST} concurrent calls, then exits 0`, { timeout: 120_000 }, async () => {
    const ca = join(dir(), 'pki');
    expect((await runCli(['dev-ca', 'init', '--dir', ca, '--trust-domain', TD])).code).toBe(0);
    expect((await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', BROKER_ID, '--name', 'broker'])).code).toBe(0);
    const workerIds = [1, 2, 3, 4].map((i) => `spiffe://${TD}/ns/burst/sa/worker-${i}`);
    for (const [i, id] of workerIds.entries()) expect((await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', id, '--name', `w${i}`])).code).toBe(0);
    const policyPath = join(dir(), 'policy.yaml');
    await writeFile(policyPath, POLICY);

    const broker = startCli(
      ['serve'],
      devCaServeEnv(ca, TD, {
        TASK_BROKER_POLICY: policyPath,
        TASK_BROKER_DATA_DIR: join(dir(), 'data'),
        TASK_BROKER_MIGRATE: 'true',
        TASK_BROKER_SHUTDOWN_GRACE: '30s',
        // The burst is 50 calls per workload at once: over the default admission limits by design.
        TASK_BROKER_MAX_CALLS_PER_CALLER: '100',
        // Few calls at a time, so the burst is still running (most of it waiting its turn) when the SIGTERM lands.
        TASK_BROKER_MAX_ACTIVE_CALLS: '2',
        TASK_BROKER_LOG_LEVEL: 'info',
      }),
    );
    const clients: BrokerClient[] = [];
    try {
      const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
      const http = await broker.waitForLog((l) => l.msg === 'HTTP listening');
      const ops = `http://127.0.0.1:${String(http.port)}`;
      const address = `127.0.0.1:${String(listening.port)}`;
      expect((await fetch(`${ops}/readyz`)).status).toBe(200);

      for (const i of workerIds.keys()) clients.push(BrokerClient.withSvid(address, await devCaSvid(ca, `w${i}`, BROKER_ID)));
      const spec = taskSpec(AUDIENCE);
      // Connections open, and one task per worker to issue tokens for.
      const tasks = await Promise.all(clients.map(async (c) => ({ c, taskId: (await c.createTask({ spec })).task!.taskId })));
      const metricsText = async () => (await fetch(`${ops}/metrics`)).text();
      const handledBefore = total(await metricsText(), 'grpc_server_handled_total', { grpc_service: 'taskbroker.v1.TaskBroker' });

      const outcomes = Array.from({ length: BURST }, (_, i) => {
        const { c, taskId } = tasks[i % tasks.length]!;
        const call = i % 2 === 0 ? c.createTask({ spec }, { deadlineMs: 60_000 }) : c.issueToken({ taskId }, { deadlineMs: 60_000 });
        return call.then(
          () => 'OK',
          (err: grpc.ServiceError) => `${grpc.status[err.code]}: ${err.details}`,
        );
      });
      // Every call has reached the broker (handled or being handled): now SIGTERM.
      for (;;) {
        const text = await metricsText();
        const received =
          total(text, 'task_broker_grpc_requests_in_flight') +
          total(text, 'grpc_server_handled_total', { grpc_service: 'taskbroker.v1.TaskBroker' }) -
          handledBefore;
        if (received >= BURST) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      broker.child.kill('SIGTERM');
      // While it drains, it says it is not ready (the ops port stays up until the calls are done).
      let sawNotReady = false;
      for (let i = 0; i < 200 && !sawNotReady; i++) {
        try {
          const res = await fetch(`${ops}/readyz`);
          if (res.status === 503) sawNotReady = ((await res.json()) as { shuttingDown?: boolean }).shuttingDown === true;
        } catch {
          break; // the ops port already closed: the drain is over
        }
        if (!sawNotReady) await new Promise((r) => setTimeout(r, 5));
      }

      const results = await Promise.all(outcomes);
      expect(results.filter((r) => r !== 'OK')).toEqual([]);
      expect(await broker.exited).toBe(0);

      const lines = broker
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const shuttingDown = lines.findIndex((l) => l.msg === 'shutting down');
      expect(shuttingDown).toBeGreaterThan(0);
      expect(lines.at(-1)?.msg).toBe('stopped');
      const rpcs = lines.filter((l) => l.msg === 'rpc' && (l.method === 'CreateTask' || l.method === 'IssueToken'));
      expect(rpcs).toHaveLength(BURST + clients.length);
      expect(rpcs.every((l) => l.code === 'OK')).toBe(true);
      // The SIGTERM really landed mid-burst: calls completed after it, and /readyz said so.
      const afterSignal = lines.slice(shuttingDown).filter((l) => l.msg === 'rpc').length;
      expect(afterSignal).toBeGreaterThan(0);
      expect(sawNotReady).toBe(true);
      expect(lines.some((l) => l.msg === 'gRPC calls drained')).toBe(true);
    } finally {
      for (const c of clients) c.close();
      broker.child.kill('SIGKILL');
    }
  });
});

/** Sends SIGTERM and resolves with the exit code and how long the exit took. */
async function sigtermExit(replica: ServeProcess): Promise<{ code: number | null; tookMs: number }> {
  const t0 = performance.now();
  replica.cli.child.kill('SIGTERM');
  const code = await replica.cli.exited;
  return { code, tookMs: performance.now() - t0 };
}

describe('task-broker serve under SIGTERM with idle connections', () => {
  it('closes idle client connections at once (GOAWAY) and exits in under a second', { timeout: 180_000 }, async () => {
    const database = await createTestDatabase('postgres');
    const pki = await createServePki(join(dir(), 'idle-pki'), TD);
    const replica = await startServe({ pki, databaseUrl: database.url, policyYaml: POLICY, env: { TASK_BROKER_SHUTDOWN_GRACE: '30s' } });
    try {
      const ids = [1, 2, 3].map((i) => `spiffe://${TD}/ns/burst/sa/idle-${i}`);
      const spec = taskSpec(AUDIENCE);
      // Three channels, each with a finished call behind it: open and idle.
      for (const id of ids) expect((await (await replica.client(id)).createTask({ spec })).task?.state).toBe('TASK_STATE_ACTIVE');
      const { code, tookMs } = await sigtermExit(replica);
      console.info('SIGTERM with idle channels: exited in', Math.round(tookMs), 'ms');
      expect(code).toBe(0);
      expect(tookMs).toBeLessThan(1_000);
      const stdout = replica.cli.stdout();
      expect(stdout).not.toContain('shutdown deadline reached');
      expect(stdout).toContain('"msg":"stopped"');
    } finally {
      await replica.stop('SIGKILL');
      await database.drop();
    }
  });
});

describe('task-broker serve under SIGTERM with a client that ignores GOAWAY', () => {
  it('does not wait for an idle connection whose client never closes it', { timeout: 180_000 }, async () => {
    const database = await createTestDatabase('postgres');
    const pki = await createServePki(join(dir(), 'raw-pki'), TD);
    const replica = await startServe({ pki, databaseUrl: database.url, policyYaml: POLICY, env: { TASK_BROKER_SHUTDOWN_GRACE: '30s' } });
    const svid = await pki.svid(`spiffe://${TD}/ns/burst/sa/raw`);
    // A bare HTTP/2 client: the connection preface and an empty SETTINGS frame, then silence.
    const socket = tlsConnect({
      host: '127.0.0.1',
      port: replica.port,
      cert: svid.certChainPem,
      key: svid.keyPem,
      ca: pki.bundlePem,
      ALPNProtocols: ['h2'],
      rejectUnauthorized: false,
    });
    socket.on('error', () => undefined);
    try {
      await new Promise<void>((resolve) => socket.once('secureConnect', resolve));
      const serverSettings = new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
      await serverSettings; // the broker's HTTP/2 session is up: it sent its SETTINGS
      socket.on('data', () => undefined);
      const { code, tookMs } = await sigtermExit(replica);
      console.info('SIGTERM with a raw idle HTTP/2 connection: exited in', Math.round(tookMs), 'ms');
      expect(code).toBe(0);
      expect(tookMs).toBeLessThan(1_000);
    } finally {
      socket.destroy();
      await replica.stop('SIGKILL');
      await database.drop();
    }
  });
});
