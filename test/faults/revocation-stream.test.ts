/**
 * Issue 11, revocation push against real `task-broker serve` processes: three replicas on a
 * private PostgreSQL cluster, a resource server verifying offline with the verifier SDK
 * subscribed to replica C.
 *
 *   - tasks completed on replica A are refused as REVOKED by the verifier;
 *   - replica C is killed (SIGKILL) mid-way and started again on the same port: the revocations
 *     committed while it was down reach the verifier after it reconnects with its cursor;
 *   - PostgreSQL is stopped: heartbeats stop, the verifier's revocation data goes stale and it
 *     fails closed (REVOCATION_STATUS_UNKNOWN), never open; once the database is back, the
 *     stream is current again and verification resumes without a restart of anything.
 *
 * (Runs dist/: build first.)
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { createTaskTokenVerifier, type TaskTokenVerifier } from '../../src/verifier/index.js';
import { freePort, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { createServePki, randomKek, startServe, type ServePki, type ServeProcess } from '../helpers/serve-process.js';
import { AUDIENCE, POLICY, TD, until, WORKER } from './fixtures.js';

let dir: string;
let cluster: PgCluster;
let pki: ServePki;
let databaseUrl: string;
const kek = randomKek();
const replicas: ServeProcess[] = [];
const FAST = ['--revocation-heartbeat', '200ms', '--revocation-poll-interval', '200ms', '--database-wait', '60s'];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-faults-revocations-'));
  [cluster, pki] = await Promise.all([startPgCluster(), createServePki(join(dir, 'pki'), TD)]);
  databaseUrl = await cluster.createDatabase();
}, 180_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.stop('SIGKILL')));
  await cluster?.destroy();
  await rm(dir, { recursive: true, force: true });
});

function serve(port = 0): Promise<ServeProcess> {
  return startServe({ pki, databaseUrl, policyYaml: POLICY, kek, args: FAST, env: { TASK_BROKER_LISTEN: `127.0.0.1:${port}` } });
}

describe('revocation stream across replica and database faults', () => {
  it('a killed stream replica misses nothing; a database outage fails closed and recovers', { timeout: 240_000 }, async () => {
    onTestFailed(() => {
      for (const [i, r] of replicas.entries())
        console.error(`--- replica ${i} stdout (tail) ---\n${r.cli.stdout().slice(-4000)}\n--- stderr ---\n${r.cli.stderr().slice(-2000)}`);
    });
    const portC = await freePort();
    const a = await serve();
    replicas.push(a);
    replicas.push(await serve());
    let c = await serve(portC);
    replicas.push(c);

    const worker = await a.client(WORKER);
    const workerSvid = await pki.svid(WORKER);
    const presenter = new X509Certificate(workerSvid.certDer);
    const apiSvid = await pki.svid(AUDIENCE);
    const resourceServer = new BrokerClient({
      address: c.address,
      credentials: svidChannelCredentials({ certChainPem: apiSvid.certChainPem, keyPem: apiSvid.keyPem, bundle: pki.bundlePem, serverId: pki.brokerId }),
      channelOptions: svidChannelOptions(),
    });
    const verifier: TaskTokenVerifier = createTaskTokenVerifier({
      broker: resourceServer,
      revocations: 'stream',
      maxStalenessMs: 2_000,
      reconnectMaxMs: 1_000,
      reporting: false,
    });
    try {
      await verifier.ready();
      const liveToken = async () => {
        const created = await worker.createTask({
          spec: { action: 'invoice.export', audience: AUDIENCE, scopes: ['invoices:read'], ttl: { seconds: 600 } },
        });
        const taskId = created.task!.taskId;
        return { taskId, token: (await worker.issueToken({ taskId })).token };
      };
      const verify = (token: string) => verifier.verify(token, { presenterCertificate: presenter });

      // Revoked on A, refused through C.
      const first = await liveToken();
      expect((await verify(first.token)).reason).toBe('VALID');
      await worker.completeTask(first.taskId, 'done');
      await until(async () => (await verify(first.token)).reason === 'REVOKED', 10_000, 'the completion on A to reach the verifier through C');

      // C killed; revocations committed on A meanwhile; C back on the same port.
      const alive = await liveToken();
      const whileDown = await Promise.all(Array.from({ length: 20 }, () => liveToken()));
      await c.stop('SIGKILL');
      for (const t of whileDown) await worker.completeTask(t.taskId, 'done while C was down');
      c = await serve(portC);
      replicas.push(c);
      await until(
        async () => (await Promise.all(whileDown.map((t) => verify(t.token)))).every((r) => r.reason === 'REVOKED'),
        30_000,
        'every revocation committed while C was down to reach the verifier',
      );
      expect((await verify(alive.token)).reason).toBe('VALID');

      // The database stops: no heartbeats, stale data, fail closed. Never VALID while stale.
      await cluster.stop('fast');
      await until(async () => (await verify(alive.token)).reason === 'REVOCATION_STATUS_UNKNOWN', 30_000, 'the verifier to fail closed');
      expect(verifier.stats().revocationsStale).toBe(true);
      await cluster.start();
      await until(async () => (await verify(alive.token)).reason === 'VALID', 30_000, 'the verifier to be current again');
      await until(
        async () => {
          try {
            await worker.completeTask(alive.taskId, 'done after the outage');
            return true;
          } catch {
            return false;
          }
        },
        30_000,
        'A to write again',
      );
      await until(async () => (await verify(alive.token)).reason === 'REVOKED', 10_000, 'the revocation after the outage to reach the verifier');
    } finally {
      await verifier.close();
      resourceServer.close();
    }
  });
});
