/**
 * Latency and throughput of the broker's RPCs over real mTLS gRPC, against an in-process broker
 * on embedded PGlite and on PostgreSQL.
 *
 *   npm run bench -- [--store pglite|postgres|both] [--ops N] [--concurrency C] [--warmup W] [--json]
 *
 * Each phase runs W warm-up operations (not recorded), then N measured ones with C in flight at
 * a time; every operation's latency goes into an HDR histogram (microsecond resolution).
 * Phases: WhoAmI (no database: the transport baseline), CreateTask, GetTask, IssueToken, VerifyToken (with the presenter's thumbprint, by the
 * audience), and the whole flow create → issue → verify → complete (one flow = one op).
 *
 * Follow-up phases spread their calls over many tasks: the broker locks the task row and the
 * task's audit chain per call, so hammering a single task would measure that lock instead.
 *
 * PostgreSQL: a unique database on TASK_BROKER_BENCH_PG_URL (default
 * postgres://postgres@127.0.0.1:5432/postgres), dropped at the end.
 */
import * as hdr from 'hdr-histogram-js';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { BrokerClient } from '../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../src/client/credentials.js';
import { chainPem, createRootCa, mintX509Svid, privateKeyPem, type IssuedCertificate } from '../src/devca/certificates.js';
import type { CreateTaskRequest } from '../src/gen/taskbroker/v1/CreateTaskRequest.js';
import { silentLogger } from '../src/observability/logger.js';
import { parsePolicy } from '../src/policy/policy.js';
import { StaticPolicySource } from '../src/policy/policy-source.js';
import { jsonToStruct } from '../src/protocol/struct.js';
import { startTaskBroker, type RunningTaskBroker } from '../src/server.js';
import { TrustBundleSet } from '../src/spiffe/bundle.js';
import { certificateThumbprint, parsePemCertificates } from '../src/spiffe/certificate.js';
import { openStore, type Store, type StoreKind } from '../src/store/database.js';
import { migrate } from '../src/store/migrate.js';
import { KeyEncryptionKey, generateKekBase64 } from '../src/tokens/kek.js';
import { StaticServerIdentity, tlsIdentityFrom } from '../src/transport/server-identity.js';

const TRUST_DOMAIN = 'bench.test';
const BROKER_ID = `spiffe://${TRUST_DOMAIN}/task-broker`;
const WORKER_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/worker`;
const API_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/api`;
const ADMIN_URL = process.env.TASK_BROKER_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** The broker denies everything without a policy; this one allows the bench's workloads what they do, and nothing else. */
const BENCH_POLICY = `
version: 1
rules:
  - name: bench
    callers:
      spiffe_ids: ["${WORKER_ID}"]
    actions: ["invoice.export"]
    audiences: ["${API_ID}"]
    scopes: ["invoices:read", "invoices:export"]
`;

// ---------------------------------------------------------------------------------------------
// Options

interface BenchOptions {
  stores: StoreKind[];
  ops: number;
  concurrency: number;
  warmup: number;
  json: boolean;
}

class UsageError extends Error {}

const USAGE = 'usage: run.js [--store pglite|postgres|both] [--ops N] [--concurrency C] [--warmup W] [--json]';

function positiveInt(name: string, value: string, allowZero = false): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < (allowZero ? 0 : 1)) throw new UsageError(`--${name}: expected a ${allowZero ? 'non-negative' : 'positive'} integer, got "${value}"\n${USAGE}`);
  return n;
}

const FLAGS = {
  store: { type: 'string', default: 'both' },
  ops: { type: 'string', default: '2000' },
  concurrency: { type: 'string', default: '16' },
  warmup: { type: 'string', default: '200' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parseFlags(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n${USAGE}`);
  }
}

function parseOptions(argv: string[]): BenchOptions {
  const values = parseFlags(argv);
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  let stores: StoreKind[];
  switch (values.store) {
    case 'both':
      stores = ['pglite', 'postgres'];
      break;
    case 'pglite':
    case 'postgres':
      stores = [values.store];
      break;
    default:
      throw new UsageError(`--store: expected pglite, postgres or both, got "${values.store}"\n${USAGE}`);
  }
  return {
    stores,
    ops: positiveInt('ops', values.ops),
    concurrency: positiveInt('concurrency', values.concurrency),
    warmup: positiveInt('warmup', values.warmup, true),
    json: values.json,
  };
}

// ---------------------------------------------------------------------------------------------
// Measurement

interface PhaseResult {
  store: StoreKind;
  operation: string;
  ops: number;
  concurrency: number;
  durationMs: number;
  opsPerSec: number;
  /** Latencies in milliseconds. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  /** CPU time (user + system) of this whole process, client and broker together, per op. */
  cpuMsPerOp: number;
}

/**
 * Runs `fn(0..n-1)` with `concurrency` calls in flight; each call's latency is recorded in
 * microseconds. Any failure aborts the phase.
 */
async function runOps(n: number, concurrency: number, fn: (i: number) => Promise<void>, histogram?: hdr.Histogram): Promise<{ wallMs: number; maxUs: number }> {
  let next = 0;
  let maxUs = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const t0 = process.hrtime.bigint();
      await fn(i);
      const us = Number((process.hrtime.bigint() - t0) / 1000n);
      histogram?.recordValue(Math.max(1, us));
      if (us > maxUs) maxUs = us;
    }
  };
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return { wallMs: Number(process.hrtime.bigint() - start) / 1e6, maxUs };
}

async function phase(
  store: StoreKind,
  operation: string,
  options: BenchOptions,
  fn: (i: number, warm: boolean) => Promise<void>,
  log: (line: string) => void,
): Promise<PhaseResult> {
  if (options.warmup > 0) await runOps(options.warmup, options.concurrency, (i) => fn(i, true));
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  try {
    const cpu0 = process.cpuUsage();
    const { wallMs: durationMs, maxUs } = await runOps(options.ops, options.concurrency, (i) => fn(i, false), histogram);
    const cpu = process.cpuUsage(cpu0);
    // HDR percentiles are bucket upper bounds (3 significant digits): never report one above the exact max.
    const ms = (us: number) => Math.min(us, maxUs) / 1000;
    const result: PhaseResult = {
      store,
      operation,
      ops: options.ops,
      concurrency: options.concurrency,
      durationMs,
      opsPerSec: options.ops / (durationMs / 1000),
      p50: ms(histogram.getValueAtPercentile(50)),
      p90: ms(histogram.getValueAtPercentile(90)),
      p99: ms(histogram.getValueAtPercentile(99)),
      max: maxUs / 1000,
      mean: histogram.mean / 1000,
      cpuMsPerOp: (cpu.user + cpu.system) / 1000 / options.ops,
    };
    log(`  ${store} ${operation}: ${result.opsPerSec.toFixed(0)} ops/s, p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms, ${result.cpuMsPerOp.toFixed(2)} ms CPU/op`);
    return result;
  } finally {
    histogram.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Broker under test

interface PemSvid {
  certChainPem: string;
  keyPem: string;
}

async function pemOf(issued: IssuedCertificate): Promise<PemSvid> {
  return { certChainPem: chainPem(issued), keyPem: await privateKeyPem(issued.keys) };
}

async function adminQuery<T extends pg.QueryResultRow = pg.QueryResultRow>(text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
}

interface BenchDatabase {
  open(): Promise<Store>;
  drop(): Promise<void>;
}

async function createDatabase(kind: StoreKind, poolSize: number): Promise<BenchDatabase> {
  if (kind === 'pglite') {
    const dataDir = await mkdtemp(join(os.tmpdir(), 'tb-bench-pglite-'));
    return { open: () => openStore({ dataDir }), drop: () => rm(dataDir, { recursive: true, force: true }) };
  }
  const name = `tb_bench_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  const url = ADMIN_URL.replace(/\/[^/]*$/, `/${name}`);
  return {
    open: () => openStore({ databaseUrl: url, maxConnections: poolSize }),
    drop: async () => {
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

interface Harness {
  broker: RunningTaskBroker;
  /** The task owner: creates tasks, issues tokens. */
  worker: BrokerClient;
  /** The resource server the tokens are for: verifies them. */
  api: BrokerClient;
  /** x5t#S256 of the worker's leaf: what its tokens are bound to. */
  workerThumbprint: string;
  close(): Promise<void>;
}

async function startHarness(kind: StoreKind, options: BenchOptions): Promise<Harness> {
  const root = await createRootCa(TRUST_DOMAIN);
  const [serverSvid, workerSvid, apiSvid] = await Promise.all([mintX509Svid(root, BROKER_ID), mintX509Svid(root, WORKER_ID), mintX509Svid(root, API_ID)]);
  const serverPem = await pemOf(serverSvid);
  const identity = new StaticServerIdentity(tlsIdentityFrom(serverPem.certChainPem, serverPem.keyPem));
  const bundles = new TrustBundleSet([{ trustDomain: TRUST_DOMAIN, authorities: parsePemCertificates(root.pem) }]);

  // Pool sized like the test helper, and never below the concurrency.
  const database = await createDatabase(kind, Math.max(20, options.concurrency + 4));
  const cleanups: Array<() => Promise<void> | void> = [() => database.drop()];
  const closeAll = async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        console.error(`bench: cleanup failed: ${(err as Error).message}`);
      }
    }
  };
  try {
    const store = await database.open();
    let brokerOwnsStore = false;
    cleanups.push(() => (brokerOwnsStore ? undefined : store.close()));
    await migrate(store.db);
    const broker = await startTaskBroker({
      logger: silentLogger(),
      identity,
      bundles,
      store,
      kek: KeyEncryptionKey.fromBase64(generateKekBase64()),
      policy: new StaticPolicySource(parsePolicy(BENCH_POLICY, 'bench-policy.yaml')),
      host: '127.0.0.1',
      port: 0,
      migrate: false,
      sweepIntervalMs: 0,
    });
    brokerOwnsStore = true;
    cleanups.push(() => broker.close(1_000));

    const address = `127.0.0.1:${broker.port}`;
    const connect = async (issued: IssuedCertificate) => {
      const client = new BrokerClient({
        address,
        credentials: svidChannelCredentials({ ...(await pemOf(issued)), bundle: root.pem, serverId: BROKER_ID }),
        channelOptions: svidChannelOptions(),
      });
      cleanups.push(() => client.close());
      return client;
    };
    const worker = await connect(workerSvid);
    const api = await connect(apiSvid);
    // Connect both channels before anything is timed.
    await Promise.all([worker.whoAmI(), api.whoAmI()]);
    return { broker, worker, api, workerThumbprint: certificateThumbprint(workerSvid.der), close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Workload

function taskRequest(i: number): CreateTaskRequest {
  return {
    spec: {
      action: 'invoice.export',
      resources: [`s3://bench-bucket/invoices/${i}`],
      audience: API_ID,
      scopes: ['invoices:read', 'invoices:export'],
      params: jsonToStruct({ format: 'csv', month: '2024-06', n: i }),
      ttl: { seconds: 3600 },
    },
  };
}

async function createTask(client: BrokerClient, i: number): Promise<{ taskId: string; taskHash: string }> {
  const res = await client.createTask(taskRequest(i));
  if (!res.task) throw new Error('CreateTask: no task in the response');
  return { taskId: res.task.taskId, taskHash: res.task.taskHash };
}

async function issueToken(client: BrokerClient, taskId: string): Promise<string> {
  const res = await client.issueToken({ taskId });
  if (!res.token) throw new Error('IssueToken: no token in the response');
  return res.token;
}

async function verifyToken(h: Harness, token: string, expectedTaskHash?: string): Promise<void> {
  const res = await h.api.verifyToken({ token, presenterCertThumbprint: h.workerThumbprint, ...(expectedTaskHash ? { expectedTaskHash } : {}) });
  if (!res.valid || !res.bindingChecked) throw new Error(`VerifyToken: expected a valid, bound token, got ${res.reason}: ${res.detail}`);
}

/** How many distinct tasks the follow-up phases spread their calls over. */
function poolSize(options: BenchOptions): number {
  return Math.max(64, options.concurrency * 8);
}

async function benchStore(kind: StoreKind, options: BenchOptions, log: (line: string) => void): Promise<PhaseResult[]> {
  log(`${kind}: starting broker`);
  const h = await startHarness(kind, options);
  const results: PhaseResult[] = [];
  try {
    // No database: the cost of an mTLS gRPC round trip through the authenticator, for reference.
    results.push(
      await phase(kind, 'WhoAmI (no DB, baseline)', options, async () => {
        const res = await h.worker.whoAmI();
        if (res.spiffeId !== WORKER_ID) throw new Error(`WhoAmI: unexpected ${res.spiffeId}`);
      }, log),
    );

    const created: Array<{ taskId: string; taskHash: string }> = [];
    results.push(
      await phase(kind, 'CreateTask', options, async (i, warm) => {
        const task = await createTask(h.worker, warm ? -1 - i : i);
        if (!warm) created.push(task);
      }, log),
    );

    const pool = created.slice(0, poolSize(options));
    const at = <T>(items: T[], i: number): T => {
      const item = items[i % items.length];
      if (item === undefined) throw new Error('empty pool');
      return item;
    };

    results.push(
      await phase(kind, 'GetTask', options, async (i) => {
        const res = await h.worker.getTask(at(pool, i).taskId);
        if (res.task?.state !== 'TASK_STATE_ACTIVE') throw new Error(`GetTask: unexpected state ${res.task?.state ?? 'none'}`);
      }, log),
    );

    const tokens: Array<{ token: string; taskHash: string }> = [];
    results.push(
      await phase(kind, 'IssueToken', options, async (i, warm) => {
        const task = at(pool, i);
        const token = await issueToken(h.worker, task.taskId);
        if (!warm && tokens.length < poolSize(options)) tokens.push({ token, taskHash: task.taskHash });
      }, log),
    );

    results.push(
      await phase(kind, 'VerifyToken', options, async (i) => {
        const t = at(tokens, i);
        await verifyToken(h, t.token, t.taskHash);
      }, log),
    );

    results.push(
      await phase(kind, 'flow: create→issue→verify→complete', options, async (i, warm) => {
        const task = await createTask(h.worker, warm ? -1_000_000 - i : 1_000_000 + i);
        const token = await issueToken(h.worker, task.taskId);
        await verifyToken(h, token, task.taskHash);
        const done = await h.worker.completeTask(task.taskId, 'ok');
        if (done.task?.state !== 'TASK_STATE_COMPLETED' || done.revokedTokens !== 1) {
          throw new Error(`CompleteTask: unexpected result ${done.task?.state ?? 'none'}, revoked ${done.revokedTokens}`);
        }
      }, log),
    );
  } finally {
    log(`${kind}: closing`);
    await h.close();
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Report

interface Machine {
  cpus: number;
  cpuModel: string;
  node: string;
  platform: string;
  memoryGiB: number;
  /** 1-minute load average at start: other work on the machine skews the numbers. */
  loadAverage: number;
  postgres?: string;
}

function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadAverage: Math.round((os.loadavg()[0] ?? 0) * 100) / 100,
  };
}

function table(results: PhaseResult[]): string {
  const header = ['store', 'operation', 'ops', 'conc', 'ops/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'cpu ms/op'];
  const rows = results.map((r) => [
    r.store,
    r.operation,
    String(r.ops),
    String(r.concurrency),
    r.opsPerSec.toFixed(0),
    r.p50.toFixed(2),
    r.p90.toFixed(2),
    r.p99.toFixed(2),
    r.max.toFixed(2),
    r.cpuMsPerOp.toFixed(2),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]?.length ?? 0)));
  const left = new Set([0, 1]);
  const line = (cells: string[]) => cells.map((cell, c) => (left.has(c) ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const m = machine();
  if (options.stores.includes('postgres')) {
    const [row] = await adminQuery<{ server_version: string }>('SHOW server_version');
    if (row) m.postgres = row.server_version;
  }
  // Progress goes to stderr so that --json leaves stdout machine-readable.
  const log = (line: string) => console.error(line);
  if (!options.json) {
    console.log(`machine: ${m.cpus} × ${m.cpuModel}, ${m.memoryGiB} GiB, ${m.platform}`);
    console.log(`node ${m.node}${m.postgres ? `, PostgreSQL ${m.postgres}` : ''}, load average ${m.loadAverage} at start`);
    console.log(`ops ${options.ops} per operation, concurrency ${options.concurrency}, warm-up ${options.warmup} per operation, mTLS gRPC over 127.0.0.1\n`);
  }
  const results: PhaseResult[] = [];
  for (const kind of options.stores) results.push(...(await benchStore(kind, options, log)));
  if (options.json) {
    console.log(JSON.stringify({ machine: m, options: { stores: options.stores, ops: options.ops, concurrency: options.concurrency, warmup: options.warmup }, results }, null, 2));
  } else {
    console.log(`\n${table(results)}`);
  }
}

main().catch((err: unknown) => {
  if (err instanceof UsageError) console.error(err.message);
  else console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exitCode = 1;
});
