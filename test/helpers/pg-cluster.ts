/**
 * A private, throwaway PostgreSQL cluster per test file, for tests that restart or stop the
 * database under a running broker (the shared server at 127.0.0.1:5432 must never be restarted:
 * other test files use it concurrently).
 *
 * `startPgCluster()` runs initdb into a fresh temp dir, listens on 127.0.0.1 only at a free port
 * (unix sockets inside the temp dir), trusts every local and 127.0.0.1 connection and logs to
 * `logFile`. PostgreSQL refuses to run as root, so when the tests run as root every initdb/pg_ctl
 * runs as the `postgres` OS user (`runuser -u postgres --`), which also owns the temp dir.
 *
 * Nothing outlives the test process: `destroy()` stops the cluster and removes its dir, a
 * process 'exit' hook does the same synchronously for clusters a test forgot, and a detached
 * reaper (see `armReaper`) does it when the test process dies without running its exit hooks
 * (SIGKILL, a crashed worker).
 *
 * The binaries come from TASK_BROKER_TEST_PG_BINDIR, default /usr/lib/postgresql/15/bin.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { runProcess, type ProcessResult } from './process.js';

export const PG_BINDIR = process.env.TASK_BROKER_TEST_PG_BINDIR ?? '/usr/lib/postgresql/15/bin';

/** Overall limit for a start or stop to complete (generous: CI machines can be slow). */
const READY_LIMIT_MS = 60_000;
/** Hard limit for any single initdb/pg_ctl invocation, after which it is killed. */
const COMMAND_LIMIT_MS = 90_000;

export interface PgCluster {
  readonly port: number;
  /** The cluster's temp dir (data dir, sockets, log); removed by destroy(). */
  readonly dir: string;
  readonly dataDir: string;
  /** The server log, for debugging output in failures (see logTail()). */
  readonly logFile: string;
  /** postgres://postgres@127.0.0.1:PORT/DB (default db 'postgres'). */
  url(database?: string): string;
  /** Creates a fresh database with a unique name and returns its URL. */
  createDatabase(): Promise<string>;
  /** `pg_ctl stop -m MODE` (default fast); resolves when the server has stopped. A no-op when it is not running. */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Starts the server; resolves when it accepts TCP connections. A no-op (but for the wait) when it is running. */
  start(): Promise<void>;
  /** `pg_ctl restart -m MODE` (default fast); resolves when it accepts connections again. */
  restart(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Stops the server (immediate) and removes its dir; idempotent. */
  destroy(): Promise<void>;
  /** Whether a postmaster is running for this cluster (`pg_ctl status`). */
  isRunning(): Promise<boolean>;
  /** The postmaster's pid from postmaster.pid, or undefined when there is none. */
  postmasterPid(): Promise<number | undefined>;
  /** The last `lines` lines of the server log. */
  logTail(lines?: number): Promise<string>;
}

const asRoot = () => process.getuid?.() === 0;

/** argv for a PostgreSQL server tool, run as the postgres OS user when we are root. */
function pgCommand(tool: string, args: string[]): string[] {
  const bin = join(PG_BINDIR, tool);
  return asRoot() ? ['runuser', '-u', 'postgres', '--', bin, ...args] : [bin, ...args];
}

function run(argv: string[], cwd: string, limitMs = COMMAND_LIMIT_MS): Promise<ProcessResult> {
  return runProcess(argv as [string, ...string[]], { cwd, limitMs });
}

function describeResult(argv: string[], r: ProcessResult): string {
  return `${argv.join(' ')} exited ${String(r.code)}\nstdout: ${r.stdout.trim()}\nstderr: ${r.stderr.trim()}`;
}

/** A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

function postgresIds(): { uid: number; gid: number } {
  const uid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) throw new Error(`running as root needs a 'postgres' OS user to run PostgreSQL as: ${uid.stderr}${gid.stderr}`);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

export interface Reaper {
  /** The reaper's pid (a detached `sh`). */
  readonly pid: number | undefined;
  /** The owner cleaned up itself: the reaper exits without running its command. Idempotent. */
  disarm(): void;
}

/**
 * Runs `script` (sh, with `env`) once this process is gone, however it goes (even SIGKILL): a
 * detached `sh` blocks reading a pipe whose only writer is this process; end-of-file means the
 * process died, a line means disarm(). Nothing is polled and the reaper keeps no handle of this
 * process's event loop alive.
 */
export function armReaper(script: string, env: Record<string, string> = {}): Reaper {
  const child: ChildProcess = spawn('sh', ['-c', `if read -r _; then exit 0; fi\n${script}`], {
    detached: true,
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { ...process.env, ...env },
  });
  child.on('error', () => undefined);
  const stdin = child.stdin as unknown as Socket | null;
  stdin?.on('error', () => undefined);
  stdin?.unref();
  child.unref();
  let disarmed = false;
  return {
    pid: child.pid,
    disarm() {
      if (disarmed) return;
      disarmed = true;
      stdin?.end('disarm\n');
    },
  };
}

/** Clusters not yet destroyed, stopped synchronously if the process exits with them running. */
const live = new Set<{ dir: string; dataDir: string }>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      const [command, ...args] = pgCommand('pg_ctl', ['stop', '-D', c.dataDir, '-m', 'immediate', '-w', '-t', '30']) as [string, ...string[]];
      spawnSync(command, args, { cwd: c.dir, stdio: 'ignore', timeout: 40_000 });
      rmSync(c.dir, { recursive: true, force: true });
    }
    live.clear();
  });
}

/** Whether `pid` is a live process (a zombie, exited but not yet reaped, counts as gone). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Resolves once `pid` has exited, polling within READY_LIMIT_MS. */
async function waitGone(pid: number, what: string): Promise<void> {
  const deadline = Date.now() + READY_LIMIT_MS;
  while (processAlive(pid)) {
    if (Date.now() > deadline) throw new Error(`${what} still running ${READY_LIMIT_MS} ms after pg_ctl stop`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function isAddressInUse(log: string): boolean {
  return /Address already in use|could not create any TCP\/IP sockets/.test(log);
}

export async function startPgCluster(options: { port?: number } = {}): Promise<PgCluster> {
  installExitHook();
  const base = process.env.TASK_BROKER_TEST_PG_TMPDIR ?? tmpdir();
  const dir = await mkdtemp(join(base, 'tb-pg-'));
  const dataDir = join(dir, 'data');
  const socketDir = join(dir, 'sock');
  const logFile = join(dir, 'postgres.log');
  await mkdir(socketDir, { mode: 0o700 });
  if (asRoot()) {
    const { uid, gid } = postgresIds();
    await chown(dir, uid, gid);
    await chown(socketDir, uid, gid);
  }
  const entry = { dir, dataDir };
  live.add(entry);
  // If this process dies without its exit hooks, the reaper stops the postmaster and removes the dir.
  const reaper = armReaper(
    `${pgCommand('pg_ctl', ['stop', '-D', '"$TB_PG_DATA"', '-m', 'immediate', '-w', '-t', '30']).join(' ')} >/dev/null 2>&1\nrm -rf -- "$TB_PG_DIR"`,
    {
      TB_PG_DATA: dataDir,
      TB_PG_DIR: dir,
    },
  );

  const logTail = async (lines = 60): Promise<string> => {
    try {
      return (await readFile(logFile, 'utf8'))
        .split('\n')
        .slice(-lines - 1)
        .join('\n');
    } catch {
      return '(no server log)';
    }
  };
  const pgCtl = async (args: string[]): Promise<ProcessResult> => run(pgCommand('pg_ctl', args), dir);

  let port = options.port ?? (await freePort());
  const initArgv = pgCommand('initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C', '--no-instructions']);
  const init = await run(initArgv, dir);
  if (init.code !== 0) {
    reaper.disarm();
    live.delete(entry);
    await rm(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${describeResult(initArgv, init)}`);
  }
  await writeFile(join(dataDir, 'pg_hba.conf'), ['local all all trust', 'host all all 127.0.0.1/32 trust', ''].join('\n'));
  const settings = [
    '',
    '# test/helpers/pg-cluster.ts',
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${socketDir}'`,
    'max_connections = 200',
    "shared_buffers = '32MB'",
    // Speed: no fsync. This only matters for an OS crash or power loss, which these tests do not
    // simulate: a stopped or killed postmaster (pg_ctl stop -m fast|immediate) leaves the WAL it
    // wrote in the page cache and replays it at the next start. synchronous_commit stays on, so a
    // commit is acknowledged only after its WAL is written, and acknowledged commits survive
    // `pg_ctl restart -m fast` (and -m immediate).
    'fsync = off',
    'synchronous_commit = on',
    'full_page_writes = on',
    "log_line_prefix = '%m [%p] %q%u@%d '",
    'log_connections = off',
    'log_disconnections = off',
    "dynamic_shared_memory_type = 'mmap'",
    `port = ${port}`,
    '',
  ];
  const confHandle = await open(join(dataDir, 'postgresql.conf'), 'a');
  try {
    await confHandle.appendFile(settings.join('\n'));
  } finally {
    await confHandle.close();
  }

  let destroyed = false;
  let destroying: Promise<void> | undefined;
  // One operation at a time: a stop racing a start would leave pg_ctl confused.
  let queue: Promise<unknown> = Promise.resolve();
  const serialize = <T>(op: () => Promise<T>): Promise<T> => {
    const next = queue.then(() => {
      if (destroyed) throw new Error(`PostgreSQL cluster in ${dir} was destroyed`);
      return op();
    });
    queue = next.catch(() => undefined);
    return next;
  };

  const pgIsReady = async (): Promise<boolean> => {
    const r = await run([join(PG_BINDIR, 'pg_isready'), '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-t', '2'], dir, 10_000);
    return r.code === 0;
  };
  /** Polls pg_isready until the server accepts TCP connections, within READY_LIMIT_MS overall. */
  const waitReady = async (): Promise<void> => {
    const deadline = Date.now() + READY_LIMIT_MS;
    for (;;) {
      if (await pgIsReady()) return;
      if (Date.now() > deadline) throw new Error(`PostgreSQL on port ${port} not accepting connections within ${READY_LIMIT_MS} ms\n${await logTail()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const postmasterPid = async (): Promise<number | undefined> => {
    try {
      const pid = Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  const isRunning = async (): Promise<boolean> => (await pgCtl(['status', '-D', dataDir])).code === 0;

  const startOnce = async (): Promise<ProcessResult> => pgCtl(['start', '-D', dataDir, '-l', logFile, '-w', '-t', String(READY_LIMIT_MS / 1000)]);
  const start = async (): Promise<void> => {
    if (!(await isRunning())) {
      let r = await startOnce();
      // Another process may have taken the port between freePort() and the bind: pick another.
      for (let attempt = 0; r.code !== 0 && options.port === undefined && attempt < 3 && isAddressInUse(await logTail(20)); attempt++) {
        port = await freePort();
        const h = await open(join(dataDir, 'postgresql.conf'), 'a');
        try {
          await h.appendFile(`port = ${port}\n`);
        } finally {
          await h.close();
        }
        r = await startOnce();
      }
      if (r.code !== 0) throw new Error(`pg_ctl start failed: ${describeResult(['pg_ctl', 'start'], r)}\n--- server log ---\n${await logTail()}`);
    }
    await waitReady();
  };
  const stop = async (mode: 'fast' | 'immediate'): Promise<void> => {
    if (!(await isRunning())) return;
    const pid = await postmasterPid();
    const r = await pgCtl(['stop', '-D', dataDir, '-m', mode, '-w', '-t', String(READY_LIMIT_MS / 1000)]);
    if (r.code !== 0 && (await isRunning()))
      throw new Error(`pg_ctl stop -m ${mode} failed: ${describeResult(['pg_ctl', 'stop'], r)}\n--- server log ---\n${await logTail()}`);
    // pg_ctl returns once postmaster.pid is gone; the postmaster unlinks it just before it exits.
    if (pid) await waitGone(pid, `the postmaster (pid ${pid}) of ${dataDir}`);
  };

  const cluster: PgCluster = {
    get port() {
      return port;
    },
    dir,
    dataDir,
    logFile,
    url: (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    createDatabase: () =>
      serialize(async () => {
        const name = `tb_fault_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
        const client = new pg.Client({ connectionString: cluster.url('postgres') });
        await client.connect();
        try {
          await client.query(`CREATE DATABASE ${name}`);
        } finally {
          await client.end();
        }
        return cluster.url(name);
      }),
    stop: (mode = 'fast') => serialize(() => stop(mode)),
    start: () => serialize(start),
    restart: (mode = 'fast') =>
      serialize(async () => {
        if (!(await isRunning())) return start();
        const r = await pgCtl(['restart', '-D', dataDir, '-m', mode, '-l', logFile, '-w', '-t', String(READY_LIMIT_MS / 1000)]);
        if (r.code !== 0)
          throw new Error(`pg_ctl restart -m ${mode} failed: ${describeResult(['pg_ctl', 'restart'], r)}\n--- server log ---\n${await logTail()}`);
        await waitReady();
      }),
    destroy() {
      destroying ??= (async () => {
        // Let a running operation finish, then refuse new ones.
        await queue;
        destroyed = true;
        try {
          await stop('immediate');
        } finally {
          await rm(dir, { recursive: true, force: true });
          live.delete(entry);
          reaper.disarm();
        }
      })();
      return destroying;
    },
    isRunning: () => isRunning(),
    postmasterPid,
    logTail,
  };

  try {
    await start();
  } catch (err) {
    await cluster.destroy().catch(() => undefined);
    throw err;
  }
  return cluster;
}
