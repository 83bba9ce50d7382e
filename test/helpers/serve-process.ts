/**
 * A real `task-broker serve` child process (bin/task-broker.js on the built dist/: build first),
 * with file-based dev-ca PKI made by the real CLI, a policy file and a KEK, and mTLS workload
 * clients for it. Several replicas on one database must share the KEK: pass the same `kek`
 * (see randomKek()) to each startServe().
 *
 * A child the test forgets is killed when the test process exits, and a detached reaper kills it
 * if the test process dies without running its exit hooks.
 */
import { X509Certificate, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials } from '../../src/client/credentials.js';
import { runCli, startCli, type RunningCli } from './cli.js';
import { armReaper } from './pg-cluster.js';

export interface MintedSvid {
  certPath: string;
  keyPath: string;
  /** PEM chain, leaf first. */
  certChainPem: string;
  keyPem: string;
  /** DER of the leaf certificate (what VerifyToken's presenter_cert_der wants). */
  certDer: Buffer;
}

export interface ServePki {
  dir: string;
  trustDomain: string;
  /** spiffe://TD/task-broker: the SVID every serve process presents. */
  brokerId: string;
  /** The CA certificate: the trust bundle of the trust domain. */
  bundlePath: string;
  bundlePem: string;
  /** Mints a new SVID for `spiffeId` with `task-broker dev-ca mint` (into NAME.pem/NAME.key; a unique name by default). */
  mint(spiffeId: string, name?: string): Promise<MintedSvid>;
  /**
   * The SVID for `spiffeId`, minted on first use and then the same for every caller: clients of
   * any replica present it, so its leaf is the presenter certificate of tokens issued to that ID.
   */
  svid(spiffeId: string): Promise<MintedSvid>;
}

/** What `make` promised for `key` before, or a new promise; a rejected one is forgotten, so the next call tries again. */
function cachedPromise<T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> {
  let value = cache.get(key);
  if (!value) {
    value = make();
    cache.set(key, value);
    value.catch(() => cache.delete(key));
  }
  return value;
}

async function cli(args: string[]): Promise<void> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`task-broker ${args.join(' ')} exited ${String(r.code)}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

/** A dev-ca trust domain in `dir` (created by `dev-ca init`) with the broker's SVID minted as broker.pem/broker.key. */
export async function createServePki(dir: string, trustDomain = 'example.org'): Promise<ServePki> {
  const brokerId = `spiffe://${trustDomain}/task-broker`;
  await cli(['dev-ca', 'init', '--dir', dir, '--trust-domain', trustDomain]);
  await cli(['dev-ca', 'mint', '--dir', dir, '--spiffe-id', brokerId, '--name', 'broker']);
  const bundlePath = join(dir, 'ca.pem');
  const bundlePem = await readFile(bundlePath, 'utf8');
  let counter = 0;
  const mint = async (spiffeId: string, name?: string): Promise<MintedSvid> => {
    const stem = name ?? `svid-${String(++counter)}-${randomBytes(3).toString('hex')}`;
    await cli(['dev-ca', 'mint', '--dir', dir, '--spiffe-id', spiffeId, '--name', stem]);
    const certPath = join(dir, `${stem}.pem`);
    const keyPath = join(dir, `${stem}.key`);
    const [certChainPem, keyPem] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
    return { certPath, keyPath, certChainPem, keyPem, certDer: new X509Certificate(certChainPem).raw };
  };
  const svids = new Map<string, Promise<MintedSvid>>();
  return {
    dir,
    trustDomain,
    brokerId,
    bundlePath,
    bundlePem,
    mint,
    svid: (spiffeId) => cachedPromise(svids, spiffeId, () => mint(spiffeId)),
  };
}

/** A fresh key-encryption key (base64 of 32 random bytes), to share between replicas. */
export function randomKek(): string {
  return randomBytes(32).toString('base64');
}

export interface ServeProcess {
  readonly cli: RunningCli;
  readonly pid: number;
  /** gRPC port. */
  readonly port: number;
  /** 127.0.0.1:PORT */
  readonly address: string;
  /** http://127.0.0.1:HTTPPORT; '' when the HTTP listener is off. */
  readonly opsUrl: string;
  /** The KEK it runs with (base64). */
  readonly kek: string;
  /**
   * A workload client over mTLS presenting the SVID of `spiffeId` (pki.svid(): minted on first
   * use, shared by every replica). Cached per ID unless channelOptions are given; stop() closes
   * every client made here.
   */
  client(spiffeId: string, options?: { channelOptions?: grpc.ChannelOptions }): Promise<BrokerClient>;
  readyz(): Promise<{ status: number; body: unknown }>;
  metrics(): Promise<string>;
  /** Entries of /proc/PID/fd. */
  fdCount(): Promise<number>;
  /**
   * Sends SIGTERM (or `signal`) and waits for the exit; returns the exit code (null when a
   * signal ended it). SIGKILL after `killAfterMs` (default 60 s). Closes the clients made by
   * client(). Calling it again while it stops sends the new signal and returns the same result.
   */
  stop(signal?: NodeJS.Signals, killAfterMs?: number): Promise<number | null>;
}

/** Children not yet exited (and their work dirs), killed if the test process exits with them running. */
const liveChildren = new Map<RunningCli, string>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const [c, workDir] of liveChildren) {
      c.child.kill('SIGKILL');
      rmSync(workDir, { recursive: true, force: true });
    }
  });
}

export async function startServe(options: {
  pki: ServePki;
  /** PostgreSQL URL; without it (and without dataDir) the broker runs on PGlite in a temp dir. */
  databaseUrl?: string;
  dataDir?: string;
  policyYaml: string;
  /** base64 KEK; random unless given (replicas on one database must share it). */
  kek?: string;
  /** --migrate at start (default true). */
  migrate?: boolean;
  /** Passed to the child as is, over the defaults set here. */
  env?: Record<string, string>;
  /** Appended to `serve` as is. */
  args?: string[];
  /** How long to wait for the listening lines (default 60 s). */
  startTimeoutMs?: number;
  /** Called with the child as soon as it is spawned (to watch its log while it starts). */
  onSpawn?: (cli: RunningCli) => void;
}): Promise<ServeProcess> {
  installExitHook();
  const { pki } = options;
  const workDir = await mkdtemp(join(tmpdir(), 'tb-serve-'));
  const policyPath = join(workDir, 'policy.yaml');
  await writeFile(policyPath, options.policyYaml);
  const kek = options.kek ?? randomKek();

  // Start from a clean slate: no TASK_BROKER_* (or Workload API socket) from the test's own environment.
  const env: NodeJS.ProcessEnv = {};
  for (const key of Object.keys(process.env)) {
    if ((key.startsWith('TASK_BROKER_') && !key.startsWith('TASK_BROKER_TEST_')) || key === 'SPIFFE_ENDPOINT_SOCKET') env[key] = undefined;
  }
  Object.assign(env, {
    TASK_BROKER_LISTEN: '127.0.0.1:0',
    TASK_BROKER_HTTP_LISTEN: '127.0.0.1:0',
    TASK_BROKER_SVID_CERT: join(pki.dir, 'broker.pem'),
    TASK_BROKER_SVID_KEY: join(pki.dir, 'broker.key'),
    TASK_BROKER_BUNDLES: `${pki.trustDomain}=${pki.bundlePath}`,
    TASK_BROKER_POLICY: policyPath,
    TASK_BROKER_KEK: kek,
    TASK_BROKER_LOG_LEVEL: 'info',
    ...(options.databaseUrl ? { TASK_BROKER_DATABASE_URL: options.databaseUrl } : { TASK_BROKER_DATA_DIR: options.dataDir ?? join(workDir, 'data') }),
    ...((options.migrate ?? true) ? { TASK_BROKER_MIGRATE: 'true' } : {}),
    ...options.env,
  });

  const running = startCli(['serve', ...(options.args ?? [])], env);
  liveChildren.set(running, workDir);
  options.onSpawn?.(running);
  const pid = running.child.pid;
  const reaper = pid
    ? armReaper('kill -KILL "$TB_SERVE_PID" 2>/dev/null\nrm -rf -- "$TB_SERVE_DIR"', { TB_SERVE_PID: String(pid), TB_SERVE_DIR: workDir })
    : undefined;
  void running.exited.then(() => {
    liveChildren.delete(running);
    reaper?.disarm();
  });

  let port: number;
  let opsUrl = '';
  try {
    if (!pid) throw new Error('task-broker serve did not start');
    // The HTTP listener (when on) logs before the gRPC one.
    const listening = await running.waitForLog((l) => l.msg === 'task-broker listening', options.startTimeoutMs ?? 60_000);
    port = Number(listening.port);
    const http = running
      .stdout()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === 'HTTP listening');
    if (http) opsUrl = `http://127.0.0.1:${String(http.port)}`;
  } catch (err) {
    running.child.kill('SIGKILL');
    await running.exited;
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }
  const address = `127.0.0.1:${String(port)}`;

  const clients: BrokerClient[] = [];
  const cached = new Map<string, Promise<BrokerClient>>();
  const makeClient = async (spiffeId: string, channelOptions?: grpc.ChannelOptions): Promise<BrokerClient> => {
    const svid = await pki.svid(spiffeId);
    const client = new BrokerClient({
      address,
      credentials: svidChannelCredentials({ certChainPem: svid.certChainPem, keyPem: svid.keyPem, bundle: pki.bundlePem, serverId: pki.brokerId }),
      channelOptions,
    });
    clients.push(client);
    return client;
  };
  const ops = (path: string): string => {
    if (!opsUrl) throw new Error('the HTTP listener of this serve process is off');
    return `${opsUrl}${path}`;
  };

  let stopping: Promise<number | null> | undefined;
  return {
    cli: running,
    pid,
    port,
    address,
    opsUrl,
    kek,
    client(spiffeId, clientOptions = {}) {
      if (clientOptions.channelOptions) return makeClient(spiffeId, clientOptions.channelOptions);
      return cachedPromise(cached, spiffeId, () => makeClient(spiffeId));
    },
    async readyz() {
      const res = await fetch(ops('/readyz'), { signal: AbortSignal.timeout(10_000) });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON: the text as is
      }
      return { status: res.status, body };
    },
    async metrics() {
      const res = await fetch(ops('/metrics'), { signal: AbortSignal.timeout(10_000) });
      if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
      return res.text();
    },
    async fdCount() {
      return (await readdir(`/proc/${pid}/fd`)).length;
    },
    stop(signal = 'SIGTERM', killAfterMs = 60_000) {
      const alive = () => running.child.exitCode === null && running.child.signalCode === null;
      if (alive()) running.child.kill(signal);
      stopping ??= (async () => {
        // In-flight calls carry on after close(); no new calls.
        for (const c of clients) c.close();
        let timer: NodeJS.Timeout | undefined;
        const limit = new Promise<'limit'>((resolve) => (timer = setTimeout(() => resolve('limit'), killAfterMs)));
        const first = await Promise.race([running.exited, limit]);
        clearTimeout(timer);
        if (first === 'limit') running.child.kill('SIGKILL');
        const code = await running.exited;
        await rm(workDir, { recursive: true, force: true });
        return code;
      })();
      return stopping;
    },
  };
}
