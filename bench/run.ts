/**
 * `npm run bench`: the broker beside what it is measured against, in one command, one process
 * tree and one period of time (see bench/README.md):
 *
 *   1. a bare grpc-js mTLS echo server (the transport ceiling);
 *   2. node oidc-provider 9.13: client_credentials with tls_client_auth, certificate-bound ES256
 *      JWT access tokens, and introspection;
 *   3. a real `task-broker serve` process on PostgreSQL and on PGlite: CreateTask, IssueToken,
 *      VerifyToken, the whole flow, and IssueToken open-loop at a fraction of its measured rate.
 *
 * Every server is a child process of this one; the load comes from other child processes
 * (load.js). For each scenario: server CPU per call from /proc/PID/stat (and, on PostgreSQL,
 * the CPU of the backends that serve the broker and of the cluster's WAL writer, checkpointer
 * and background writer), peak RSS of the server, latency percentiles, errors.
 */
import { execFile, fork, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify, type ParseArgsConfig } from 'node:util';
import * as hdr from 'hdr-histogram-js';
import pg from 'pg';
import {
  apiId,
  BENCH_POLICY,
  BROKER_ID,
  errorMessage,
  TRUST_DOMAIN,
  workerId,
  type CallKind,
  type ConnectionSpec,
  type FromLoad,
  type FromServer,
  type LoadResult,
  type RunPlan,
  type ServerConfig,
  type TargetSpec,
  type ToLoad,
} from './common.js';
import { machineCpuMs, PgCpuSampler, processCpuMs, processMemoryKiB, sumCpuMs, type PgCpu } from './proc.js';

const BIN = fileURLToPath(new URL('../../bin/task-broker.js', import.meta.url));
const HERE = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const execFileAsync = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// Scenarios

type TargetName = 'echo' | 'oidc' | 'broker-pg' | 'broker-pglite';

interface Scenario {
  id: string;
  target: TargetName;
  call: CallKind;
  mode: 'closed' | 'open';
  title: string;
  /** What one op is, for the per-op columns. */
  unit: string;
}

const brokerScenarios = (prefix: 'pg' | 'pglite', target: TargetName, store: string): Scenario[] => [
  { id: `${prefix}-create`, target, call: 'create', mode: 'closed', title: `broker/${store} CreateTask`, unit: 'call' },
  { id: `${prefix}-issue`, target, call: 'issue', mode: 'closed', title: `broker/${store} IssueToken`, unit: 'call' },
  { id: `${prefix}-verify`, target, call: 'verify', mode: 'closed', title: `broker/${store} VerifyToken`, unit: 'call' },
  { id: `${prefix}-flow`, target, call: 'flow', mode: 'closed', title: `broker/${store} flow (4 calls)`, unit: 'flow' },
  { id: `${prefix}-issue-open`, target, call: 'issue', mode: 'open', title: `broker/${store} IssueToken open loop`, unit: 'call' },
];

const SCENARIOS: Scenario[] = [
  { id: 'echo', target: 'echo', call: 'echo', mode: 'closed', title: 'grpc-js mTLS echo', unit: 'call' },
  { id: 'oidc-token', target: 'oidc', call: 'oidc-token', mode: 'closed', title: 'oidc-provider token (JWT)', unit: 'call' },
  { id: 'oidc-token-opaque', target: 'oidc', call: 'oidc-token-opaque', mode: 'closed', title: 'oidc-provider token (opaque)', unit: 'call' },
  { id: 'oidc-introspect', target: 'oidc', call: 'oidc-introspect', mode: 'closed', title: 'oidc-provider introspection', unit: 'call' },
  ...brokerScenarios('pg', 'broker-pg', 'PostgreSQL'),
  ...brokerScenarios('pglite', 'broker-pglite', 'PGlite'),
];

const GROUPS: Record<string, (s: Scenario) => boolean> = {
  all: () => true,
  oidc: (s) => s.target === 'oidc',
  broker: (s) => s.target.startsWith('broker'),
  pg: (s) => s.target === 'broker-pg',
  pglite: (s) => s.target === 'broker-pglite',
};

// ---------------------------------------------------------------------------------------------
// Options

class UsageError extends Error {}

const FLAGS: NonNullable<ParseArgsConfig['options']> = {
  seconds: { type: 'string' },
  warmup: { type: 'string' },
  inflight: { type: 'string' },
  connections: { type: 'string' },
  generators: { type: 'string' },
  only: { type: 'string' },
  'open-fraction': { type: 'string' },
  'open-rate': { type: 'string' },
  'serve-arg': { type: 'string', multiple: true },
  'pg-url': { type: 'string' },
  json: { type: 'boolean', default: false },
  keep: { type: 'boolean', default: false },
  report: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
};

const HELP = `usage: npm run bench -- [options]

Runs, one after another in one process tree, a bare grpc-js mTLS echo server, node oidc-provider
(client_credentials + tls_client_auth, certificate-bound ES256 JWTs, introspection) and a real
\`task-broker serve\` on PostgreSQL and on PGlite, each loaded by separate load-generator
processes; prints req/s, p50/p99, server CPU per call (PostgreSQL backends apart), peak RSS and
the ratios between them. See bench/README.md.

options:
  --seconds N           measured seconds per scenario (default 8)
  --warmup N            warm-up seconds before each measurement, at the same load (default 5)
  --inflight N          calls in flight in all (closed loop), spread over the generators (default 64)
  --connections N       mTLS connections (one workload identity each) in all (default 4); HTTPS
                        has one request per connection at a time, so oidc-provider gets
                        --inflight keep-alive connections spread over these identities
  --generators N        load-generator processes (default 2)
  --only LIST           comma-separated scenarios or groups (default all):
                        ${SCENARIOS.map((s) => s.id).join(', ')};
                        groups: ${Object.keys(GROUPS).join(', ')}
  --open-fraction F     open-loop rate as a fraction of the measured closed-loop IssueToken rate
                        of the same store (default 0.5)
  --open-rate N         open-loop rate in calls/s instead (same for both stores)
  --serve-arg ARG       extra argument for \`task-broker serve\` (repeatable), e.g.
                        --serve-arg=--max-active-calls=8 or --serve-arg=--log-level=warn
  --pg-url URL          PostgreSQL server for the bench database (default
                        TASK_BROKER_BENCH_PG_URL or postgres://postgres@127.0.0.1:5432/postgres);
                        a unique database is created on it and dropped at the end
  --json                results as JSON on stdout (progress stays on stderr)
  --report FILE         print the text report of an earlier run's --json output, and run nothing
  --keep                keep the work directory (PKI, the broker's logs) and say where it is
  -h, --help            this help`;

interface Options {
  seconds: number;
  warmup: number;
  inflight: number;
  connections: number;
  generators: number;
  scenarios: Scenario[];
  openFraction: number;
  openRate?: number;
  serveArgs: string[];
  pgUrl: string;
  json: boolean;
  keep: boolean;
}

function number(name: string, text: string, { min = 1, integer = true, max = Infinity } = {}): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name}: expected ${integer ? 'a whole number' : 'a number'} from ${min}${max < Infinity ? ` to ${max}` : ''}, got "${text}"`);
  }
  return n;
}

function parseOptions(argv: string[]): Options | undefined {
  let parsed: Record<string, string | boolean | Array<string | boolean> | undefined>;
  try {
    parsed = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  const text = (name: string): string | undefined => {
    const v = parsed[name];
    return typeof v === 'string' ? v : undefined;
  };
  const values = {
    help: parsed.help === true,
    json: parsed.json === true,
    keep: parsed.keep === true,
    only: text('only'),
    seconds: text('seconds') ?? '8',
    warmup: text('warmup') ?? '5',
    inflight: text('inflight') ?? '64',
    connections: text('connections') ?? '4',
    generators: text('generators') ?? '2',
    'open-fraction': text('open-fraction') ?? '0.5',
    'open-rate': text('open-rate'),
    'pg-url': text('pg-url'),
    'serve-arg': (Array.isArray(parsed['serve-arg']) ? parsed['serve-arg'] : []).filter((a): a is string => typeof a === 'string'),
  };
  if (values.help) {
    console.log(HELP);
    return undefined;
  }
  const report = text('report');
  if (report !== undefined) {
    // `npm run bench -- --json > FILE` puts npm's own banner before the JSON (`npm run -s` does not).
    const saved = readFileSync(report, 'utf8');
    printReport(JSON.parse(saved.slice(Math.max(0, saved.indexOf('\n{') + 1))) as Report);
    return undefined;
  }
  let scenarios = SCENARIOS;
  if (values.only !== undefined) {
    const wanted = values.only.split(',').map((s) => s.trim()).filter(Boolean);
    const picked = new Set<Scenario>();
    for (const name of wanted) {
      const group = GROUPS[name];
      const matches = group ? SCENARIOS.filter(group) : SCENARIOS.filter((s) => s.id === name);
      if (matches.length === 0) throw new UsageError(`--only: unknown scenario or group "${name}"`);
      for (const s of matches) picked.add(s);
    }
    scenarios = SCENARIOS.filter((s) => picked.has(s));
  }
  const generators = number('generators', values.generators, { max: 64 });
  const connections = number('connections', values.connections, { max: 256 });
  const inflight = number('inflight', values.inflight, { max: 100_000 });
  if (connections < generators) throw new UsageError('--connections must be at least --generators (each generator has its own connections)');
  if (inflight < connections) throw new UsageError('--inflight must be at least --connections');
  return {
    seconds: number('seconds', values.seconds, { min: 0.5, integer: false }),
    warmup: number('warmup', values.warmup, { min: 0, integer: false }),
    inflight,
    connections,
    generators,
    scenarios,
    openFraction: number('open-fraction', values['open-fraction'], { min: 0.01, max: 10, integer: false }),
    ...(values['open-rate'] !== undefined ? { openRate: number('open-rate', values['open-rate'], { min: 1, integer: false }) } : {}),
    serveArgs: values['serve-arg'],
    pgUrl: values['pg-url'] ?? process.env.TASK_BROKER_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    json: values.json,
    keep: values.keep,
  };
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every child and the bench database go, however the run ends.

const cleanups: Array<() => Promise<void> | void> = [];
const children = new Set<ChildProcess>();

async function cleanUp(): Promise<void> {
  while (cleanups.length > 0) {
    const fn = cleanups.pop();
    try {
      await fn?.();
    } catch (err) {
      console.error(`bench: cleanup: ${errorMessage(err)}`);
    }
  }
}

process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`bench: ${signal}, cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Waits for the child to exit after `signal`; SIGKILL after `limitMs`. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', limitMs = 30_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------
// PKI: the project's own dev CA (the `dev-ca` CLI), as the tests make it.

interface Pki {
  dir: string;
  bundlePath: string;
  broker: { certPath: string; keyPath: string };
  connections: ConnectionSpec[];
}

async function cli(args: string[]): Promise<void> {
  try {
    await execFileAsync(process.execPath, [BIN, ...args]);
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string };
    throw new Error(`task-broker ${args.join(' ')} failed: ${errorMessage(err)}\n${e.stderr ?? ''}${e.stdout ?? ''}`);
  }
}

async function createPki(dir: string, connections: number): Promise<Pki> {
  await cli(['dev-ca', 'init', '--dir', dir, '--trust-domain', TRUST_DOMAIN]);
  const files = (name: string) => ({ certPath: join(dir, `${name}.pem`), keyPath: join(dir, `${name}.key`) });
  const mint = async (spiffeId: string, name: string) => {
    await cli(['dev-ca', 'mint', '--dir', dir, '--spiffe-id', spiffeId, '--name', name]);
    return { spiffeId, ...files(name) };
  };
  const specs: ConnectionSpec[] = [];
  const minting: Array<Promise<unknown>> = [mint(BROKER_ID, 'broker')];
  for (let i = 0; i < connections; i++) {
    // Mint in small batches: each mint is a node process.
    const spec = Promise.all([mint(workerId(i), `w${i}`), mint(apiId(i), `a${i}`)]).then(([worker, api]) => specs.push({ index: i, worker, api }));
    minting.push(spec);
    if (minting.length >= 4) await Promise.all(minting.splice(0));
  }
  await Promise.all(minting);
  specs.sort((a, b) => a.index - b.index);
  return { dir, bundlePath: join(dir, 'ca.pem'), broker: files('broker'), connections: specs };
}

// ---------------------------------------------------------------------------------------------
// Servers under test

interface Server {
  pid: number;
  address: string;
  describe: string;
  /** PostgreSQL: the bench database (for the CPU of its backends). */
  database?: string;
  stop(): Promise<void>;
}

function waitForMessage<T extends { type: string }>(child: ChildProcess, what: string, accept: (m: T) => boolean, limitMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(() => reject(new Error(`${what}: no answer within ${limitMs} ms`))), limitMs);
    const onMessage = (m: T) => {
      if (m.type === 'failed') finish(() => reject(new Error(`${what}: ${(m as unknown as { message: string }).message}`)));
      else if (accept(m)) finish(() => resolve(m));
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => finish(() => reject(new Error(`${what}: process exited (${code ?? signal})`)));
    const finish = (fn: () => void) => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      fn();
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

async function forkServer(script: string, config: ServerConfig, describe: string): Promise<Server> {
  const child = track(
    fork(HERE(script), [], {
      execArgv: [],
      env: { ...process.env, NODE_ENV: 'production' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
  const listening = waitForMessage<FromServer>(child, describe, (m) => m.type === 'listening');
  child.send(config);
  const m = await listening;
  if (m.type !== 'listening' || child.pid === undefined) throw new Error(`${describe}: did not start`);
  return { pid: child.pid, address: `127.0.0.1:${m.port}`, describe, stop: () => stopChild(child) };
}

interface BrokerStore {
  kind: 'pg' | 'pglite';
  databaseUrl?: string;
  database?: string;
  dataDir?: string;
}

async function startBroker(work: string, pki: Pki, store: BrokerStore, serveArgs: string[]): Promise<Server> {
  const policyPath = join(work, 'policy.yaml');
  const kekPath = join(work, 'kek');
  await writeFile(policyPath, BENCH_POLICY);
  await writeFile(kekPath, randomBytes(32).toString('base64'), { mode: 0o600 });
  const logPath = join(work, `serve-${store.kind}.log`);
  const log = openSync(logPath, 'w');
  // A clean environment for the broker: no TASK_BROKER_* or Workload API socket of the caller's.
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('TASK_BROKER_') && key !== 'SPIFFE_ENDPOINT_SOCKET') env[key] = value;
  }
  const args = [
    BIN,
    'serve',
    '--listen=127.0.0.1:0',
    '--http-listen=127.0.0.1:0',
    `--svid-cert=${pki.broker.certPath}`,
    `--svid-key=${pki.broker.keyPath}`,
    `--bundle=${TRUST_DOMAIN}=${pki.bundlePath}`,
    `--policy=${policyPath}`,
    `--kek-file=${kekPath}`,
    '--migrate',
    ...(store.databaseUrl ? [`--database-url=${store.databaseUrl}`] : [`--data-dir=${store.dataDir ?? join(work, 'pglite')}`]),
    ...serveArgs,
  ];
  // The broker logs one line per call (info): to a file, as a deployment's log shipper would read it, not through this process.
  const child = track(spawn(process.execPath, args, { env, stdio: ['ignore', log, log] }));
  closeSync(log);
  const describe = `task-broker serve (${store.kind === 'pg' ? 'PostgreSQL' : 'PGlite'})`;
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(`exited (${code ?? signal})`)));
  const started = Date.now();
  let port: number | undefined;
  while (port === undefined) {
    const outcome = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))]);
    const text = readFileSync(logPath, 'utf8');
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const entry = JSON.parse(line) as { msg?: string; port?: number };
        if (entry.msg === 'task-broker listening' && typeof entry.port === 'number') port = entry.port;
      } catch {
        // a line being written
      }
    }
    if (port === undefined && (outcome !== undefined || Date.now() - started > 120_000)) {
      throw new Error(`${describe} ${outcome ?? 'did not listen within 120 s'}:\n${text.slice(-3000)}`);
    }
  }
  if (child.pid === undefined) throw new Error(`${describe}: no pid`);
  return {
    pid: child.pid,
    address: `127.0.0.1:${port}`,
    describe,
    ...(store.database ? { database: store.database } : {}),
    stop: () => stopChild(child),
  };
}

// ---------------------------------------------------------------------------------------------
// Load generators

interface Generator {
  child: ChildProcess;
  pid: number;
  inflight: number;
  connections: number;
  request<T extends FromLoad>(message: ToLoad, accept: T['type']): Promise<T>;
}

async function startGenerators(options: Options, target: TargetSpec, pki: Pki): Promise<Generator[]> {
  const gens: Generator[] = [];
  for (let g = 0; g < options.generators; g++) {
    const child = track(fork(HERE('./load.js'), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    cleanups.push(() => stopChild(child, 'SIGKILL'));
    if (child.pid === undefined) throw new Error('load generator did not start');
    const connections = pki.connections.filter((c) => c.index % options.generators === g);
    const inflight = Math.floor(options.inflight / options.generators) + (g < options.inflight % options.generators ? 1 : 0);
    const gen: Generator = {
      child,
      pid: child.pid,
      inflight,
      connections: connections.length,
      request: <T extends FromLoad>(message: ToLoad, accept: T['type']) => {
        const answer = waitForMessage<FromLoad>(child, `load generator ${g} (${message.type})`, (m) => m.type === accept, 600_000);
        child.send(message);
        return answer as Promise<T>;
      },
    };
    await gen.request({ type: 'connect', target, connections, generator: g }, 'connected');
    gens.push(gen);
  }
  return gens;
}

async function closeGenerators(gens: Generator[]): Promise<void> {
  await Promise.all(
    gens.map(async (g) => {
      const exited = new Promise<void>((resolve) => (g.child.exitCode !== null ? resolve() : g.child.once('exit', () => resolve())));
      g.child.send({ type: 'close' } satisfies ToLoad);
      const timer = setTimeout(() => g.child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Measuring one scenario

interface ScenarioResult {
  id: string;
  title: string;
  target: TargetName;
  mode: 'closed' | 'open';
  unit: string;
  /** Closed loop: calls in flight; open loop: the arrival rate asked for. */
  inflight?: number;
  targetRate?: number;
  seconds: number;
  ok: number;
  errors: Record<string, number>;
  firstError?: string;
  ratePerSec: number;
  /** Successful ops in each whole second of the window: a stall shows as a dip. */
  perSecond: number[];
  /** The slowest and fastest whole second (ops/s). */
  slowestSecond: number;
  fastestSecond: number;
  latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number; mean: number };
  /** CPU ms per op (per flow for the flow). */
  cpuMsPerOp: { server: number; pgBackends?: number; pgBackground?: number; loadGenerators: number };
  /** CPU used in the window, in cores (1 = one core busy all the time). */
  cores: { server: number; pgBackends?: number; pgBackground?: number; loadGenerators: number; orchestrator: number; machine: number; other: number };
  pg?: { backends: number; otherActiveBackends: number };
  serverRssMiB: { peakSampled: number; hwm: number };
  open?: { scheduled: number; maxInflight: number; maxSendLagMs: number };
  /** Flow: broker calls per second that ended inside the window as steps of flows (finished or not). */
  flowCallsPerSec?: number;
  loadAverage1m: number;
  prepared?: string;
}

const nowNs = () => process.hrtime.bigint();

async function sleepUntil(t: bigint): Promise<void> {
  for (let left = t - nowNs(); left > 0n; left = t - nowNs()) {
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(100, Number(left / 1_000_000n) - 1))));
    if (t - nowNs() < 2_000_000n) {
      while (nowNs() < t) await new Promise((r) => setImmediate(r));
      return;
    }
  }
}

interface Snapshot {
  t: bigint;
  server: number;
  gens: number;
  self: number;
  machine: { busy: number; total: number };
}

function snapshot(server: Server, gens: Generator[]): Snapshot {
  const self = process.cpuUsage();
  return {
    t: nowNs(),
    server: processCpuMs(server.pid) ?? NaN,
    gens: sumCpuMs(gens.map((g) => g.pid)),
    self: (self.user + self.system) / 1000,
    machine: machineCpuMs(),
  };
}

function mergeResults(results: LoadResult[]) {
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  let ok = 0;
  let maxUs = 0;
  let scheduled = 0;
  let maxInflight = 0;
  let maxSendLagMs = 0;
  let flowCalls = 0;
  const perSecond: number[] = [];
  let firstError: string | undefined;
  const errors: Record<string, number> = {};
  for (const r of results) {
    const h = hdr.decodeFromCompressedBase64(r.histogram);
    histogram.add(h);
    h.destroy();
    ok += r.ok;
    maxUs = Math.max(maxUs, r.maxUs);
    scheduled += r.scheduled;
    maxInflight += r.maxInflight;
    maxSendLagMs = Math.max(maxSendLagMs, r.maxSendLagMs);
    flowCalls += r.flowCalls;
    r.perSecond.forEach((n, i) => (perSecond[i] = (perSecond[i] ?? 0) + n));
    firstError ??= r.firstError;
    for (const [k, n] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + n;
  }
  // HDR percentiles are bucket bounds (3 significant digits): never report one above the exact max.
  const ms = (us: number) => Math.min(us, maxUs) / 1000;
  const latencyMs =
    ok === 0
      ? { p50: NaN, p90: NaN, p99: NaN, p999: NaN, max: NaN, mean: NaN }
      : {
          p50: ms(histogram.getValueAtPercentile(50)),
          p90: ms(histogram.getValueAtPercentile(90)),
          p99: ms(histogram.getValueAtPercentile(99)),
          p999: ms(histogram.getValueAtPercentile(99.9)),
          max: maxUs / 1000,
          mean: histogram.mean / 1000,
        };
  histogram.destroy();
  return { ok, errors, firstError, latencyMs, scheduled, maxInflight, maxSendLagMs, flowCalls, perSecond: Array.from(perSecond, (n) => n ?? 0) };
}

/** The slowest and fastest whole second of the window (a partial last second is left out). */
function secondsRange(perSecond: number[], seconds: number): { slowestSecond: number; fastestSecond: number } {
  const whole = Array.from({ length: Math.floor(seconds) }, (_, i) => perSecond[i] ?? 0);
  if (whole.length === 0) return { slowestSecond: NaN, fastestSecond: NaN };
  return { slowestSecond: Math.min(...whole), fastestSecond: Math.max(...whole) };
}

async function measure(
  scenario: Scenario,
  options: Options,
  server: Server,
  gens: Generator[],
  pgAdmin: pg.Client | undefined,
  log: (line: string) => void,
  targetRate?: number,
): Promise<ScenarioResult> {
  const prepared = await Promise.all(gens.map((g) => g.request<Extract<FromLoad, { type: 'prepared' }>>({ type: 'prepare', call: scenario.call, inflight: g.inflight }, 'prepared')));
  const detail = prepared.find((p) => p.detail)?.detail;

  const start = nowNs() + 200_000_000n;
  const measureStart = start + BigInt(Math.round(options.warmup * 1e9));
  const measureEnd = measureStart + BigInt(Math.round(options.seconds * 1e9));
  const plans = gens.map(
    (g, i): RunPlan => ({
      call: scenario.call,
      mode: scenario.mode,
      inflight: g.inflight,
      ...(targetRate !== undefined ? { ratePerSec: targetRate / gens.length, offsetNs: (i * 1e9) / targetRate } : {}),
      startNs: start.toString(),
      measureStartNs: measureStart.toString(),
      measureEndNs: measureEnd.toString(),
    }),
  );
  const results = Promise.all(gens.map((g, i) => g.request<Extract<FromLoad, { type: 'result' }>>({ type: 'run', plan: plans[i] as RunPlan }, 'result')));
  results.catch(() => undefined);

  // Peak RSS of the server: VmRSS sampled through warm-up and measurement, and the kernel's VmHWM.
  let peakRssKiB = 0;
  const sampleRss = () => (peakRssKiB = Math.max(peakRssKiB, processMemoryKiB(server.pid)?.rss ?? 0));
  const rssTimer = setInterval(sampleRss, 100);

  const sampler = pgAdmin && server.database ? new PgCpuSampler(pgAdmin, server.database) : undefined;
  let pgCpu: PgCpu | undefined;
  let a: Snapshot;
  let b: Snapshot;
  try {
    await sleepUntil(measureStart);
    await sampler?.start();
    a = snapshot(server, gens);
    await sleepUntil(measureEnd);
    b = snapshot(server, gens);
    pgCpu = await sampler?.stop();
  } finally {
    clearInterval(rssTimer);
  }
  sampleRss();
  const merged = mergeResults((await results).map((r) => r.result));
  const hwm = processMemoryKiB(server.pid)?.hwm ?? NaN;

  const seconds = options.seconds;
  const spanS = Number(b.t - a.t) / 1e9;
  const rate = merged.ok / seconds;
  const cores = (ms: number) => ms / 1000 / spanS;
  const perOp = (ms: number) => (rate > 0 ? cores(ms) / rate : NaN) * 1000;
  const serverMs = b.server - a.server;
  const gensMs = b.gens - a.gens;
  const selfMs = b.self - a.self;
  const machineMs = b.machine.busy - a.machine.busy;
  const counted = serverMs + gensMs + selfMs + (pgCpu ? pgCpu.backends + pgCpu.background : 0);
  const result: ScenarioResult = {
    id: scenario.id,
    title: scenario.title,
    target: scenario.target,
    mode: scenario.mode,
    unit: scenario.unit,
    ...(scenario.mode === 'closed' ? { inflight: options.inflight } : { targetRate }),
    seconds,
    ok: merged.ok,
    errors: merged.errors,
    ...(merged.firstError ? { firstError: merged.firstError } : {}),
    ratePerSec: rate,
    perSecond: merged.perSecond,
    ...secondsRange(merged.perSecond, seconds),
    latencyMs: merged.latencyMs,
    cpuMsPerOp: {
      server: perOp(serverMs),
      ...(pgCpu ? { pgBackends: perOp(pgCpu.backends), pgBackground: perOp(pgCpu.background) } : {}),
      loadGenerators: perOp(gensMs),
    },
    cores: {
      server: cores(serverMs),
      ...(pgCpu ? { pgBackends: cores(pgCpu.backends), pgBackground: cores(pgCpu.background) } : {}),
      loadGenerators: cores(gensMs),
      orchestrator: cores(selfMs),
      machine: cores(machineMs),
      other: cores(Math.max(0, machineMs - counted)),
    },
    ...(pgCpu ? { pg: { backends: pgCpu.backendCount, otherActiveBackends: pgCpu.otherActiveBackends } } : {}),
    serverRssMiB: { peakSampled: peakRssKiB / 1024, hwm: hwm / 1024 },
    ...(scenario.call === 'flow' ? { flowCallsPerSec: merged.flowCalls / seconds } : {}),
    ...(scenario.mode === 'open' ? { open: { scheduled: merged.scheduled, maxInflight: merged.maxInflight, maxSendLagMs: merged.maxSendLagMs } } : {}),
    loadAverage1m: os.loadavg()[0] ?? NaN,
    ...(detail ? { prepared: detail } : {}),
  };
  const errorCount = Object.values(result.errors).reduce((s, n) => s + n, 0);
  log(
    `  ${scenario.id}: ${rate.toFixed(0)}/s, p50 ${result.latencyMs.p50.toFixed(2)} ms, p99 ${result.latencyMs.p99.toFixed(2)} ms, ` +
      `server ${result.cpuMsPerOp.server.toFixed(3)} ms CPU/${scenario.unit}` +
      (pgCpu ? `, PG ${(result.cpuMsPerOp.pgBackends ?? 0).toFixed(3)}+${(result.cpuMsPerOp.pgBackground ?? 0).toFixed(3)} ms` : '') +
      (result.flowCallsPerSec !== undefined ? `, ${result.flowCallsPerSec.toFixed(0)} calls/s inside flows` : '') +
      (errorCount > 0 ? `, ${errorCount} errors (${JSON.stringify(result.errors)}) first: ${result.firstError ?? ''}` : ''),
  );
  return result;
}

// ---------------------------------------------------------------------------------------------
// Report

interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  platform: string;
  node: string;
  postgres?: string;
  oidcProvider: string;
  loadAverageStart: number[];
  loadAverageEnd?: number[];
  startedAt: string;
}

function packageVersion(name: string): string {
  try {
    const path = fileURLToPath(new URL(`../../node_modules/${name}/package.json`, import.meta.url));
    return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

const fmt = (n: number | undefined, digits = 2) => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits));

function table(results: ScenarioResult[]): string {
  const header = ['scenario', 'ops/s', 'min–max/s', 'p50 ms', 'p99 ms', 'p99.9', 'errors', 'server ms/op', 'PG be ms/op', 'PG bg ms/op', 'loadgen ms/op', 'RSS MiB', 'busy cores', 'other'];
  const rows = results.map((r) => [
    `${r.title}${r.mode === 'open' ? ` @${fmt(r.targetRate, 0)}/s` : ''}`,
    r.ratePerSec < 10 ? fmt(r.ratePerSec, 1) : fmt(r.ratePerSec, 0),
    `${fmt(r.slowestSecond, 0)}–${fmt(r.fastestSecond, 0)}`,
    fmt(r.latencyMs.p50),
    fmt(r.latencyMs.p99),
    fmt(r.latencyMs.p999),
    String(Object.values(r.errors).reduce((s, n) => s + n, 0)),
    fmt(r.cpuMsPerOp.server, 3),
    fmt(r.cpuMsPerOp.pgBackends, 3),
    fmt(r.cpuMsPerOp.pgBackground, 3),
    fmt(r.cpuMsPerOp.loadGenerators, 3),
    fmt(r.serverRssMiB.peakSampled, 0),
    fmt(r.cores.machine),
    fmt(r.cores.other),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]?.length ?? 0)));
  const line = (cells: string[]) => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

interface Ratio {
  name: string;
  value: number;
  of: string;
}

function ratios(results: ScenarioResult[]): Ratio[] {
  const byId = new Map(results.map((r) => [r.id, r]));
  const out: Ratio[] = [];
  const add = (name: string, a: string, b: string, value: (x: ScenarioResult, y: ScenarioResult) => number, of: string) => {
    const x = byId.get(a);
    const y = byId.get(b);
    if (x && y) out.push({ name, value: value(x, y), of });
  };
  const rate = (x: ScenarioResult, y: ScenarioResult) => x.ratePerSec / y.ratePerSec;
  const brokerCpu = (r: ScenarioResult) => r.cpuMsPerOp.server + (r.cpuMsPerOp.pgBackends ?? 0) + (r.cpuMsPerOp.pgBackground ?? 0);
  for (const [prefix, store] of [
    ['pg', 'PostgreSQL'],
    ['pglite', 'PGlite'],
  ] as const) {
    add(`broker IssueToken (${store}) / oidc-provider token rate`, `${prefix}-issue`, 'oidc-token', rate, 'req/s ÷ req/s');
    add(`broker VerifyToken (${store}) / oidc-provider introspection rate`, `${prefix}-verify`, 'oidc-introspect', rate, 'req/s ÷ req/s');
    add(
      `CPU per issued token: broker${prefix === 'pg' ? '+PostgreSQL' : ' (PGlite inside)'} / oidc-provider`,
      `${prefix}-issue`,
      'oidc-token',
      (x, y) => brokerCpu(x) / y.cpuMsPerOp.server,
      `${prefix === 'pg' ? 'server+PG backends+PG background' : 'server'} ms ÷ server ms`,
    );
    add(`broker IssueToken (${store}) / grpc-js echo rate`, `${prefix}-issue`, 'echo', rate, 'req/s ÷ req/s');
  }
  add('PGlite IssueToken / PostgreSQL IssueToken rate', 'pglite-issue', 'pg-issue', rate, 'req/s ÷ req/s');
  add('oidc-provider token / grpc-js echo rate', 'oidc-token', 'echo', rate, 'req/s ÷ req/s');
  return out;
}

interface Settings {
  seconds: number;
  warmup: number;
  inflight: number;
  connections: number;
  generators: number;
  openFraction: number;
  openRate?: number;
  serveArgs: string[];
}

interface Report {
  machine: Machine;
  settings: Settings;
  results: ScenarioResult[];
  ratios: Ratio[];
}

/** The text report (of this run, or of an earlier run's --json output with --report). */
function printReport({ machine, settings, results, ratios: computed }: Report): void {
  const la = (l: number[] | undefined) => (l ?? []).map((n) => n.toFixed(2)).join(' / ');
  console.log(`\ntask-broker bench, ${machine.startedAt}`);
  console.log(`machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, ${machine.platform}`);
  console.log(`node ${machine.node}, oidc-provider ${machine.oidcProvider}${machine.postgres ? `, PostgreSQL ${machine.postgres}` : ''}`);
  console.log(`load average (1/5/15 min): ${la(machine.loadAverageStart)} at start, ${la(machine.loadAverageEnd)} at end`);
  console.log(
    `load: ${settings.generators} generator processes, ${settings.connections} mTLS identities, ${settings.inflight} calls in flight (HTTPS: ${settings.inflight} keep-alive connections); ` +
      `${settings.warmup} s warm-up + ${settings.seconds} s measured per scenario${settings.serveArgs.length ? `; serve ${settings.serveArgs.join(' ')}` : ''}\n`,
  );
  console.log(table(results));
  console.log('\nops/s: successful ops ended inside the window, per second; min–max/s: its slowest and fastest whole second (a stall shows there).');
  console.log('ms/op: CPU time per op (per flow for the flow) of the server process, of the PostgreSQL backends serving the broker (PG be),');
  console.log('and of the PostgreSQL WAL writer, checkpointer and background writer (PG bg, cluster-wide); RSS: peak of the server process;');
  console.log('busy cores: the whole machine; other: busy cores not accounted to the server, PostgreSQL, the generators or this process.');
  const notes: string[] = [];
  for (const r of results) {
    if (r.flowCallsPerSec !== undefined) notes.push(`${r.id}: ${fmt(r.flowCallsPerSec, 0)} broker calls/s ended inside the window as steps of flows (finished or not)`);
    if (r.open) {
      notes.push(
        `${r.id}: ${r.open.scheduled} calls scheduled at ${fmt(r.targetRate, 0)}/s, at most ${r.open.maxInflight} in flight, ` +
          `the generators at worst ${fmt(r.open.maxSendLagMs, 1)} ms behind their schedule; latency from the scheduled send time`,
      );
    }
    if (r.prepared) notes.push(`${r.id}: ${r.prepared}`);
    if (r.pg && r.pg.otherActiveBackends > 0) notes.push(`${r.id}: ${r.pg.otherActiveBackends} other client backends were active on the cluster (PG bg counts their writes too)`);
    if (Object.keys(r.errors).length > 0) notes.push(`${r.id}: ERRORS ${JSON.stringify(r.errors)}; first: ${r.firstError ?? ''}`);
    if (r.ok === 0) notes.push(`${r.id}: no op ended successfully inside the measurement window`);
  }
  if (notes.length > 0) console.log(`\nnotes:\n${notes.map((n) => `  ${n}`).join('\n')}`);
  if (computed.length > 0) {
    console.log('\nratios:');
    const width = Math.max(...computed.map((r) => r.name.length));
    for (const r of computed) console.log(`  ${r.name.padEnd(width)}  ${fmt(r.value, 3).padStart(7)}  (${r.of})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) return 0;
  const log = (line: string) => console.error(line);
  const cpus = os.cpus();
  const machine: Machine = {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    oidcProvider: packageVersion('oidc-provider'),
    loadAverageStart: os.loadavg(),
    startedAt: new Date().toISOString(),
  };
  log(`bench: load average at start ${machine.loadAverageStart.map((n) => n.toFixed(2)).join(' ')} (${machine.cpus} cores)`);
  if ((machine.loadAverageStart[0] ?? 0) > machine.cpus * 0.5) {
    log('bench: the machine is busy with other work: the figures will be lower and noisier (see the "other" column)');
  }

  const work = await mkdtemp(join(os.tmpdir(), 'tb-bench-'));
  if (options.keep) log(`bench: work directory ${work} (kept)`);
  else cleanups.push(() => rm(work, { recursive: true, force: true }));
  const results: ScenarioResult[] = [];
  try {
    log(`bench: minting the bench PKI with dev-ca (${options.connections} workload and API identities)`);
    const pki = await createPki(join(work, 'pki'), options.connections);
    const targets: TargetName[] = ['echo', 'oidc', 'broker-pg', 'broker-pglite'];
    let pgAdmin: pg.Client | undefined;
    if (options.scenarios.some((s) => s.target === 'broker-pg')) {
      const admin = new pg.Client({ connectionString: options.pgUrl, application_name: 'task-broker-bench' });
      await admin.connect();
      cleanups.push(() => admin.end());
      pgAdmin = admin;
      machine.postgres = (await admin.query<{ server_version: string }>('SHOW server_version')).rows[0]?.server_version;
    }

    for (const targetName of targets) {
      const scenarios = options.scenarios.filter((s) => s.target === targetName);
      if (scenarios.length === 0) continue;
      const mark = cleanups.length;
      let server: Server;
      switch (targetName) {
        case 'echo':
          server = await forkServer('./echo-server.js', { kind: 'echo', certPath: pki.broker.certPath, keyPath: pki.broker.keyPath, bundlePath: pki.bundlePath }, 'grpc-js echo server');
          break;
        case 'oidc':
          server = await forkServer(
            './oidc-server.js',
            { kind: 'oidc', certPath: pki.broker.certPath, keyPath: pki.broker.keyPath, bundlePath: pki.bundlePath, identities: options.connections },
            `oidc-provider ${machine.oidcProvider}`,
          );
          break;
        case 'broker-pg': {
          if (!pgAdmin) throw new Error('no PostgreSQL connection');
          const admin = pgAdmin;
          const database = `tb_bench_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
          await admin.query(`CREATE DATABASE ${database}`);
          cleanups.push(async () => void (await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)));
          const url = new URL(options.pgUrl);
          url.pathname = `/${database}`;
          server = await startBroker(work, pki, { kind: 'pg', databaseUrl: url.toString(), database }, options.serveArgs);
          break;
        }
        case 'broker-pglite':
          server = await startBroker(work, pki, { kind: 'pglite', dataDir: join(work, 'pglite') }, options.serveArgs);
          break;
      }
      cleanups.push(() => server.stop());
      log(`bench: ${server.describe} on ${server.address} (pid ${server.pid})`);
      const kind = targetName === 'broker-pg' || targetName === 'broker-pglite' ? 'broker' : targetName;
      const gens = await startGenerators(options, { kind, address: server.address, bundlePath: pki.bundlePath }, pki);

      for (const scenario of scenarios) {
        let targetRate: number | undefined;
        if (scenario.mode === 'open') {
          const closedId = scenario.id.replace(/-open$/, '');
          let closed = results.find((r) => r.id === closedId);
          if (options.openRate === undefined && !closed) {
            const calibration = SCENARIOS.find((s) => s.id === closedId);
            if (!calibration) throw new Error(`no closed-loop scenario ${closedId}`);
            log(`bench: ${calibration.id} (to set the open-loop rate)`);
            closed = await measure(calibration, options, server, gens, pgAdmin, log);
            results.push(closed);
          }
          targetRate = options.openRate ?? (closed?.ratePerSec ?? 0) * options.openFraction;
          if (!(targetRate >= 1)) {
            log(`bench: ${scenario.id} skipped: no closed-loop rate to start from`);
            continue;
          }
        }
        log(`bench: ${scenario.id}`);
        results.push(await measure(scenario, options, server, gens, pgAdmin, log, targetRate));
      }

      await closeGenerators(gens);
      // Stop the server (and drop its database) now, not at the end: the next target runs alone.
      while (cleanups.length > mark) await cleanups.pop()?.();
    }
  } finally {
    await cleanUp();
  }
  machine.loadAverageEnd = os.loadavg();
  const computed = ratios(results);
  const settings: Settings = {
    seconds: options.seconds,
    warmup: options.warmup,
    inflight: options.inflight,
    connections: options.connections,
    generators: options.generators,
    openFraction: options.openFraction,
    ...(options.openRate !== undefined ? { openRate: options.openRate } : {}),
    serveArgs: options.serveArgs,
  };
  if (options.json) {
    console.log(JSON.stringify({ machine, settings, results, ratios: computed } satisfies Report, null, 2));
    return 0;
  }
  printReport({ machine, settings, results, ratios: computed });
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  async (err: unknown) => {
    await cleanUp();
    if (err instanceof UsageError) console.error(`${err.message}\n(npm run bench -- --help for the options)`);
    else console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
