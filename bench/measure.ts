/**
 * Measuring one scenario: the generators prepare, then run one plan against shared
 * CLOCK_MONOTONIC instants (warm-up, then the window); meanwhile the orchestrator samples the
 * server's RSS and, at the window's edges, the CPU of every process involved (/proc). The
 * generators' histograms are merged here into the scenario's result.
 */
import os from 'node:os';
import * as hdr from 'hdr-histogram-js';
import type pg from 'pg';
import { HISTOGRAM_OPTIONS, now, sleepUntil, type FromLoad, type LoadResult, type RunPlan } from './common.js';
import type { Generator } from './generators.js';
import type { Options } from './options.js';
import { machineCpuMs, PgCpuSampler, processCpuMs, processMemoryKiB, sumCpuMs, type PgCpu } from './proc.js';
import type { Scenario, TargetName } from './scenarios.js';
import type { Server } from './targets.js';

export interface ScenarioResult {
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
    t: now(),
    server: processCpuMs(server.pid) ?? NaN,
    gens: sumCpuMs(gens.map((g) => g.pid)),
    self: (self.user + self.system) / 1000,
    machine: machineCpuMs(),
  };
}

function mergeResults(results: LoadResult[]) {
  const histogram = hdr.build(HISTOGRAM_OPTIONS);
  const sum = (pick: (r: LoadResult) => number) => results.reduce((total, r) => total + pick(r), 0);
  const most = (pick: (r: LoadResult) => number) => results.reduce((top, r) => Math.max(top, pick(r)), 0);
  const ok = sum((r) => r.ok);
  const maxUs = most((r) => r.maxUs);
  const perSecond: number[] = [];
  const errors: Record<string, number> = {};
  for (const r of results) {
    const h = hdr.decodeFromCompressedBase64(r.histogram);
    histogram.add(h);
    h.destroy();
    r.perSecond.forEach((n, i) => (perSecond[i] = (perSecond[i] ?? 0) + n));
    for (const [k, n] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + n;
  }
  const firstError = results.find((r) => r.firstError !== undefined)?.firstError;
  const scheduled = sum((r) => r.scheduled);
  const maxInflight = sum((r) => r.maxInflight);
  const maxSendLagMs = most((r) => r.maxSendLagMs);
  const flowCalls = sum((r) => r.flowCalls);
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

export async function measure(
  scenario: Scenario,
  options: Options,
  server: Server,
  gens: Generator[],
  pgAdmin: pg.Client | undefined,
  log: (line: string) => void,
  targetRate?: number,
): Promise<ScenarioResult> {
  const prepared = await Promise.all(
    gens.map((g) => g.request<Extract<FromLoad, { type: 'prepared' }>>({ type: 'prepare', call: scenario.call, inflight: g.inflight }, 'prepared')),
  );
  const detail = prepared.find((p) => p.detail)?.detail;

  const start = now() + 200_000_000n;
  const measureStart = start + BigInt(Math.round(options.warmup * 1e9));
  const measureEnd = measureStart + BigInt(Math.round(options.seconds * 1e9));
  const plans = gens.map((g, i): RunPlan => ({
    call: scenario.call,
    mode: scenario.mode,
    inflight: g.inflight,
    ...(targetRate !== undefined ? { ratePerSec: targetRate / gens.length, offsetNs: (i * 1e9) / targetRate } : {}),
    startNs: start.toString(),
    measureStartNs: measureStart.toString(),
    measureEndNs: measureEnd.toString(),
  }));
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
