/**
 * What the kernel says about processes and the machine (Linux /proc): CPU time and memory of a
 * process, busy time of the whole machine, and the CPU of the PostgreSQL processes that serve
 * the broker.
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';

/** Clock ticks per second of /proc/PID/stat (USER_HZ): 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

/** utime + stime of a process (all its threads), in ms; undefined once it is gone. */
export function processCpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may hold spaces: fields are counted after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return ((utime + stime) * 1000) / CLOCK_TICKS;
}

/** VmRSS and VmHWM (peak RSS) of a process, in KiB. */
export function processMemoryKiB(pid: number): { rss: number; hwm: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

/** Busy and total CPU time of the whole machine (all cores), in ms, from the first line of /proc/stat. */
export function machineCpuMs(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user/nice).
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).slice(1).map(Number);
  const total = user + nice + system + idle + iowait + irq + softirq + steal;
  return { busy: ((total - idle - iowait) * 1000) / CLOCK_TICKS, total: (total * 1000) / CLOCK_TICKS };
}

/** CPU ms of several processes, summed over those still there. */
export function sumCpuMs(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + (processCpuMs(pid) ?? 0), 0);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/** Background processes of the cluster whose work the broker's writes cause (all databases share them). */
const BACKGROUND_TYPES = new Set(['walwriter', 'checkpointer', 'background writer']);

export interface PgCpu {
  /** CPU ms of the backends of the broker's pool (application_name task-broker, the bench database). */
  backends: number;
  /** CPU ms of walwriter, checkpointer, background writer (cluster-wide) and the autovacuum workers of the bench database. */
  background: number;
  /** How many broker backends were seen in the window. */
  backendCount: number;
  /** Client backends of other databases or applications active in the window: other work on the cluster. */
  otherActiveBackends: number;
}

interface PgProcess {
  pid: number;
  role: 'backend' | 'background';
  /** CPU ms at the start of the window (0 for a process that appeared during it), and the latest value read. */
  first: number;
  last: number;
}

/**
 * Follows the CPU of the PostgreSQL processes that serve the broker, by polling pg_stat_activity
 * (through `admin`, a connection of its own) and /proc/PID/stat of the processes it lists:
 * start() reads them at the window start, poll() every `intervalMs` picks up backends that
 * connect during the window (and keeps the last value of those that leave), stop() reads them at
 * the window end.
 */
export class PgCpuSampler {
  readonly #processes = new Map<number, PgProcess>();
  #otherActive = new Set<number>();
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> = Promise.resolve();
  #started = false;

  readonly #admin: pg.Client;
  readonly #database: string;
  readonly #intervalMs: number;

  constructor(admin: pg.Client, database: string, intervalMs = 250) {
    this.#admin = admin;
    this.#database = database;
    this.#intervalMs = intervalMs;
  }

  async #poll(): Promise<void> {
    const { rows } = await this.#admin.query<{ pid: number; backend_type: string; datname: string | null; application_name: string; state: string | null }>(
      'SELECT pid, backend_type, datname, application_name, state FROM pg_stat_activity WHERE pid <> pg_backend_pid()',
    );
    for (const row of rows) {
      let role: PgProcess['role'] | undefined;
      if (row.backend_type === 'client backend' && row.datname === this.#database && row.application_name === 'task-broker') role = 'backend';
      else if (BACKGROUND_TYPES.has(row.backend_type) || (row.backend_type === 'autovacuum worker' && row.datname === this.#database)) role = 'background';
      else if (row.backend_type === 'client backend' && row.state === 'active') this.#otherActive.add(row.pid);
      if (!role) continue;
      const cpu = processCpuMs(row.pid);
      if (cpu === undefined) continue;
      const known = this.#processes.get(row.pid);
      if (known) known.last = cpu;
      else this.#processes.set(row.pid, { pid: row.pid, role, first: this.#started ? 0 : cpu, last: cpu });
    }
  }

  /** Reads every process at the window start, then polls until stop(). */
  async start(): Promise<void> {
    this.#processes.clear();
    this.#otherActive = new Set();
    this.#started = false;
    await this.#poll();
    this.#started = true;
    this.#timer = setInterval(() => {
      this.#polling = this.#polling.then(() => this.#poll()).catch(() => undefined);
    }, this.#intervalMs);
  }

  async stop(): Promise<PgCpu> {
    clearInterval(this.#timer);
    await this.#polling;
    // The last reading: processes still there are read now; those gone keep their last value.
    for (const p of this.#processes.values()) p.last = processCpuMs(p.pid) ?? p.last;
    await this.#poll().catch(() => undefined);
    const result: PgCpu = { backends: 0, background: 0, backendCount: 0, otherActiveBackends: this.#otherActive.size };
    for (const p of this.#processes.values()) {
      const used = Math.max(0, p.last - p.first);
      if (p.role === 'backend') {
        result.backends += used;
        result.backendCount++;
      } else result.background += used;
    }
    return result;
  }
}
