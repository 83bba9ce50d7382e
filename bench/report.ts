/**
 * The text report: the machine, the settings, one table row per scenario, notes on what the
 * table cannot show (errors, open-loop lag, flows) and the ratios between the targets. The same
 * report prints a run's saved --json output (--report).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ScenarioResult } from './measure.js';

export interface Machine {
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

export function packageVersion(name: string): string {
  try {
    const path = fileURLToPath(new URL(`../../node_modules/${name}/package.json`, import.meta.url));
    return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

const fmt = (n: number | undefined, digits = 2) => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits));

function table(results: ScenarioResult[]): string {
  const header = [
    'scenario',
    'ops/s',
    'min–max/s',
    'p50 ms',
    'p99 ms',
    'p99.9',
    'errors',
    'server ms/op',
    'PG be ms/op',
    'PG bg ms/op',
    'loadgen ms/op',
    'RSS MiB',
    'busy cores',
    'other',
  ];
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

export interface Ratio {
  name: string;
  value: number;
  of: string;
}

export function ratios(results: ScenarioResult[]): Ratio[] {
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

export interface Settings {
  seconds: number;
  warmup: number;
  inflight: number;
  connections: number;
  generators: number;
  openFraction: number;
  openRate?: number;
  serveArgs: string[];
}

export interface Report {
  machine: Machine;
  settings: Settings;
  results: ScenarioResult[];
  ratios: Ratio[];
}

/** The text report (of this run, or of an earlier run's --json output with --report). */
export function printReport({ machine, settings, results, ratios: computed }: Report): void {
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
    if (r.flowCallsPerSec !== undefined)
      notes.push(`${r.id}: ${fmt(r.flowCallsPerSec, 0)} broker calls/s ended inside the window as steps of flows (finished or not)`);
    if (r.open) {
      notes.push(
        `${r.id}: ${r.open.scheduled} calls scheduled at ${fmt(r.targetRate, 0)}/s, at most ${r.open.maxInflight} in flight (the sum of each generator's peak), ` +
          `the generators at worst ${fmt(r.open.maxSendLagMs, 1)} ms behind their schedule; latency from the scheduled send time`,
      );
    }
    if (r.prepared) notes.push(`${r.id}: ${r.prepared}`);
    if (r.pg && r.pg.otherActiveBackends > 0)
      notes.push(`${r.id}: ${r.pg.otherActiveBackends} other client backends were active on the cluster (PG bg counts their writes too)`);
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
