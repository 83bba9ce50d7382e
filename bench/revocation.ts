/**
 * `npm run bench:revocation`: how long a revocation takes to reach an offline verifier through
 * another replica. Three real `task-broker serve` replicas (A, B, C) on one PostgreSQL database;
 * a resource server runs the verifier SDK (revocations 'stream') subscribed to replica C; a
 * workload ends tasks on replica A (CompleteTask and CancelTask, alternating), `--in-flight` at
 * a time, `--revocations` in all. For each, the latency is from the moment the ending call is
 * sent until the verifier has the task in its revocation set (its onRevoked hook: from then on
 * verify() answers REVOKED), and, separately, from the moment A acknowledged the call; and the
 * CPU the three replicas and PostgreSQL spent per revocation over the run. The peer a Node team
 * would pick (oidc-provider) has no push: a resource server verifying its JWTs offline learns of a
 * revocation at exp, and one that asks introspection pays a call per request (`npm run bench`
 * measures that call beside VerifyToken).
 *
 *   npm run bench:revocation [-- --revocations 1000 --in-flight 4]
 *
 * PostgreSQL: TASK_BROKER_BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres);
 * a database is created for the run and dropped after it.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { BrokerClient } from '../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../src/client/credentials.js';
import { createTaskTokenVerifier } from '../src/verifier/index.js';
import { BROKER_ID, SCOPES, type SvidFiles } from './common.js';
import { PgCpuSampler, sumCpuMs } from './proc.js';
import { cleanUp, cleanUpOnExit } from './processes.js';
import { createPki, startBroker, type Server } from './targets.js';

const { values } = parseArgs({ options: { revocations: { type: 'string', default: '1000' }, 'in-flight': { type: 'string', default: '4' } } });
const TOTAL = Number(values.revocations);
const IN_FLIGHT = Number(values['in-flight']);
const ADMIN_URL = process.env.TASK_BROKER_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

function client(address: string, svid: SvidFiles, bundlePath: string): BrokerClient {
  return new BrokerClient({
    address,
    credentials: svidChannelCredentials({
      certChainPem: readFileSync(svid.certPath, 'utf8'),
      keyPem: readFileSync(svid.keyPath, 'utf8'),
      bundle: readFileSync(bundlePath, 'utf8'),
      serverId: BROKER_ID,
    }),
    channelOptions: svidChannelOptions(),
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

function summary(name: string, samples: number[]): string {
  const s = [...samples].sort((a, b) => a - b);
  const f = (ms: number) => `${ms.toFixed(1)} ms`;
  return `| ${name} | ${s.length} | ${f(percentile(s, 50))} | ${f(percentile(s, 90))} | ${f(percentile(s, 99))} | ${f(s.at(-1) ?? NaN)} |`;
}

cleanUpOnExit();
const work = await mkdtemp(join(tmpdir(), 'tb-bench-revocation-'));
const database = `tb_bench_revocation_${randomBytes(4).toString('hex')}`;
const admin = new pg.Client({ connectionString: ADMIN_URL });
await admin.connect();
await admin.query(`CREATE DATABASE ${database}`);
const url = new URL(ADMIN_URL);
url.pathname = `/${database}`;
const servers: Server[] = [];
try {
  const pki = await createPki(join(work, 'pki'), 1);
  const kekPath = join(work, 'kek');
  await writeFile(kekPath, randomBytes(32).toString('base64'), { mode: 0o600 });
  for (const name of ['a', 'b', 'c']) {
    const dir = join(work, name);
    await mkdir(dir);
    servers.push(await startBroker(dir, pki, { kind: 'pg', databaseUrl: url.toString(), database }, [`--kek-file=${kekPath}`]));
  }
  const [a, , c] = servers as [Server, Server, Server];
  const spec = pki.connections[0]!;
  const worker = client(a.address, spec.worker, pki.bundlePath);
  const resourceServer = client(c.address, spec.api, pki.bundlePath);
  const verifier = createTaskTokenVerifier({ broker: resourceServer, revocations: 'stream', reporting: false });
  await verifier.ready();

  console.log(`bench: preparing ${TOTAL} tasks with a token each on replica A`);
  const tasks: string[] = [];
  for (let i = 0; i < TOTAL; i += 16) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(16, TOTAL - i) }, async () => {
        const created = await worker.createTask({
          spec: { action: 'invoice.export', audience: spec.api.spiffeId, scopes: SCOPES, ttl: { seconds: 3600 } },
        });
        const taskId = created.task!.taskId;
        await worker.issueToken({ taskId });
        return taskId;
      }),
    );
    tasks.push(...batch);
  }

  const sentAt = new Map<string, number>();
  const ackedAt = new Map<string, number>();
  const fromSend: number[] = [];
  const fromAck: number[] = [];
  const seen = new Map<string, number>();
  const waiting = new Map<string, () => void>();
  verifier.onRevoked((taskId) => {
    if (seen.has(taskId)) return;
    seen.set(taskId, performance.now());
    waiting.get(taskId)?.();
  });

  console.log(`bench: ending ${TOTAL} tasks on replica A, ${IN_FLIGHT} at a time; the verifier listens on replica C`);
  const pids = servers.map((server) => server.pid);
  const pgCpu = new PgCpuSampler(admin, database);
  await pgCpu.start();
  const brokerCpuBefore = sumCpuMs(pids);
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < tasks.length) {
        const i = next++;
        const taskId = tasks[i]!;
        const arrived = new Promise<void>((resolve) => waiting.set(taskId, resolve));
        sentAt.set(taskId, performance.now());
        if (i % 2 === 0) await worker.completeTask(taskId, 'done');
        else await worker.cancelTask(taskId, 'not needed');
        ackedAt.set(taskId, performance.now());
        if (!seen.has(taskId)) await arrived;
        waiting.delete(taskId);
        const at = seen.get(taskId)!;
        fromSend.push(at - sentAt.get(taskId)!);
        fromAck.push(Math.max(0, at - ackedAt.get(taskId)!));
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const brokerCpuMs = sumCpuMs(pids) - brokerCpuBefore;
  const pgUsed = await pgCpu.stop();
  console.log('');
  console.log(`Revocation to an offline verifier through another replica: ${TOTAL} revocations in ${seconds.toFixed(1)} s (${(TOTAL / seconds).toFixed(0)}/s)`);
  console.log('');
  console.log('| latency | n | p50 | p90 | p99 | max |');
  console.log('|---|---|---|---|---|---|');
  console.log(summary('ending call sent on A → verifier on C has it', fromSend));
  console.log(summary('ending call acknowledged by A → verifier on C has it', fromAck));
  console.log('');
  const perRevocation = (ms: number) => `${((ms / TOTAL) * 1000).toFixed(0)} µs`;
  console.log(
    `CPU per revocation (the ending call, its commit, NOTIFY, every replica's log read and the push): the three replicas ${perRevocation(brokerCpuMs)}, ` +
      `PostgreSQL ${perRevocation(pgUsed.backends + pgUsed.background)} (backends ${perRevocation(pgUsed.backends)})`,
  );
  await verifier.close();
  worker.close();
  resourceServer.close();
} finally {
  await cleanUp();
  for (const s of servers) await s.stop().catch(() => undefined);
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => undefined);
  await admin.end();
  await rm(work, { recursive: true, force: true });
}
