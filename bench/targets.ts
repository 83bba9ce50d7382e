/**
 * The servers under test and the PKI they and the load present: the bench CA and SVIDs made with
 * the project's own `dev-ca` CLI (as the tests make them), the echo and oidc-provider servers
 * forked with IPC, and a real `task-broker serve` spawned as deployed, its log going to a file.
 */
import { execFile, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { apiId, BENCH_POLICY, BROKER_ID, errorMessage, TRUST_DOMAIN, workerId, type ConnectionSpec, type FromServer, type ServerConfig } from './common.js';
import { BIN, HERE, stopChild, track, waitForMessage } from './processes.js';

const execFileAsync = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// PKI: the project's own dev CA (the `dev-ca` CLI), as the tests make it.

export interface Pki {
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

export async function createPki(dir: string, connections: number): Promise<Pki> {
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

export interface Server {
  pid: number;
  address: string;
  describe: string;
  /** PostgreSQL: the bench database (for the CPU of its backends). */
  database?: string;
  stop(): Promise<void>;
}

export async function forkServer(script: string, config: ServerConfig, describe: string): Promise<Server> {
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

export interface BrokerStore {
  kind: 'pg' | 'pglite';
  databaseUrl?: string;
  database?: string;
  dataDir?: string;
}

export async function startBroker(work: string, pki: Pki, store: BrokerStore, serveArgs: string[]): Promise<Server> {
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
