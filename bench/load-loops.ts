/**
 * Running one plan in a load generator: the closed loop and the open loop, the measurement
 * window they count in, and the recorder of latencies (an HDR histogram, µs) and errors.
 */
import * as hdr from 'hdr-histogram-js';
import { errorMessage, HISTOGRAM_OPTIONS, now, sleepUntil, type LoadResult, type RunPlan } from './common.js';
import { keyOf } from './load-calls.js';
import type { Conn } from './load-connections.js';

/** The measurement window of the plan running, and the calls of flows that ended inside it. */
export class MeasurementWindow {
  from = 0n;
  until = 0n;
  flowCalls = 0;

  /** The window of `plan`, from now on (flow calls counted again from 0). */
  reset(plan: RunPlan): void {
    this.from = BigInt(plan.measureStartNs);
    this.until = BigInt(plan.measureEndNs);
    this.flowCalls = 0;
  }

  /** A step of a flow ended now. */
  flowStep(): void {
    const t = now();
    if (t >= this.from && t <= this.until) this.flowCalls++;
  }
}

class Recorder {
  readonly #window: MeasurementWindow;
  readonly histogram = hdr.build(HISTOGRAM_OPTIONS);
  ok = 0;
  errors: Record<string, number> = {};
  firstError?: string;
  maxUs = 0;
  /** Successful completions per whole second of the window. */
  readonly perSecond: number[] = [];

  constructor(window: MeasurementWindow) {
    this.#window = window;
  }

  success(us: number, at = now()): void {
    this.ok++;
    const second = Number((at - this.#window.from) / 1_000_000_000n);
    if (second >= 0) this.perSecond[second] = (this.perSecond[second] ?? 0) + 1;
    this.histogram.recordValue(Math.max(1, us));
    if (us > this.maxUs) this.maxUs = us;
  }

  failure(err: unknown): void {
    const key = keyOf(err);
    this.errors[key] = (this.errors[key] ?? 0) + 1;
    this.firstError ??= `${key}: ${errorMessage(err)}`.slice(0, 500);
  }

  result(extra: Pick<LoadResult, 'scheduled' | 'maxInflight' | 'maxSendLagMs'>): LoadResult {
    const histogram = hdr.encodeIntoCompressedBase64(this.histogram);
    this.histogram.destroy();
    return {
      ok: this.ok,
      errors: this.errors,
      ...(this.firstError ? { firstError: this.firstError } : {}),
      histogram,
      maxUs: this.maxUs,
      perSecond: Array.from(this.perSecond, (n) => n ?? 0),
      flowCalls: this.#window.flowCalls,
      ...extra,
    };
  }
}

/** Runs `plan` closed-loop: `plan.inflight` loops over `conns`, each sending its next call when its last one ended. */
export async function closedLoop(plan: RunPlan, conns: readonly Conn[], call: (c: Conn) => Promise<void>, window: MeasurementWindow): Promise<LoadResult> {
  const start = BigInt(plan.startNs);
  const from = BigInt(plan.measureStartNs);
  const until = BigInt(plan.measureEndNs);
  const rec = new Recorder(window);
  await sleepUntil(start);
  const loop = async (k: number) => {
    const c = conns[k % conns.length];
    if (!c) return;
    while (now() < until) {
      const t0 = now();
      let error: unknown;
      let failed = false;
      try {
        await call(c);
      } catch (err) {
        failed = true;
        error = err;
      }
      const t1 = now();
      if (t1 < from || t1 > until) continue;
      if (failed) rec.failure(error);
      else rec.success(Number((t1 - t0) / 1000n), t1);
    }
  };
  await Promise.all(Array.from({ length: plan.inflight }, (_, k) => loop(k)));
  return rec.result({ scheduled: 0, maxInflight: plan.inflight, maxSendLagMs: 0 });
}

/** Runs `plan` open-loop: a call every 1/`plan.ratePerSec` s over `conns`, whatever is still in flight. */
export async function openLoop(plan: RunPlan, conns: readonly Conn[], call: (c: Conn) => Promise<void>, window: MeasurementWindow): Promise<LoadResult> {
  const rate = plan.ratePerSec ?? 0;
  if (!(rate > 0)) throw new Error('open loop without a rate');
  const intervalNs = 1e9 / rate;
  const start = BigInt(plan.startNs) + BigInt(Math.round(plan.offsetNs ?? 0));
  const from = BigInt(plan.measureStartNs);
  const until = BigInt(plan.measureEndNs);
  const rec = new Recorder(window);
  const pending = new Set<Promise<void>>();
  let inflight = 0;
  let maxInflight = 0;
  let scheduled = 0;
  let maxLagNs = 0n;
  await sleepUntil(start);
  for (let i = 0; ; i++) {
    const at = start + BigInt(Math.round(i * intervalNs));
    if (at >= until) break;
    // Timers only, no spinning (a spinning generator takes a core from the server): wake when
    // less than a millisecond is left, and send then. A call sent early is timed from its send,
    // a call sent late from its scheduled time: neither shortens what is measured.
    let t = now();
    if (at - t >= 1_000_000n) {
      await new Promise((r) => setTimeout(r, Number((at - t) / 1_000_000n)));
      t = now();
    }
    const origin = t < at ? t : at;
    if (t - at > maxLagNs && at >= from) maxLagNs = t - at;
    const counted = at >= from;
    if (counted) scheduled++;
    const c = conns[i % conns.length];
    if (!c) break;
    inflight++;
    if (inflight > maxInflight) maxInflight = inflight;
    const p: Promise<void> = call(c).then(
      () => {
        if (counted) rec.success(Number((now() - origin) / 1000n));
      },
      (err: unknown) => {
        if (counted) rec.failure(err);
      },
    );
    const tracked = p.finally(() => {
      inflight--;
      pending.delete(tracked);
    });
    pending.add(tracked);
  }
  await Promise.all(pending);
  return rec.result({ scheduled, maxInflight, maxSendLagMs: Number(maxLagNs) / 1e6 });
}
