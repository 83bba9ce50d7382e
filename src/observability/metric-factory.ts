/**
 * How the broker's metrics are made: every one in the broker's own registry, named with
 * METRIC_PREFIX; sampled gauges read their value at scrape time.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export const METRIC_PREFIX = 'task_broker_';

/**
 * The metrics of one registry, named with METRIC_PREFIX. Gauges are sampled: their `collect()`
 * reads the broker's state at scrape time (it runs with the gauge as `this`).
 */
export function metricsIn(registry: Registry) {
  const registers = [registry];
  const name = (suffix: string) => `${METRIC_PREFIX}${suffix}`;
  return {
    counter: <L extends string = string>(suffix: string, help: string, labelNames: readonly L[] = []) =>
      new Counter<L>({ name: name(suffix), help, labelNames, registers }),
    histogram: <L extends string = string>(suffix: string, help: string, buckets: number[], labelNames: readonly L[] = []) =>
      new Histogram<L>({ name: name(suffix), help, labelNames, buckets, registers }),
    /** Absent while `value` says undefined; `labels` are the same at every scrape. */
    gauge: (suffix: string, help: string, value: () => number | undefined, labels: Record<string, string> = {}) =>
      new Gauge({
        name: name(suffix),
        help,
        labelNames: Object.keys(labels),
        registers,
        collect() {
          this.reset();
          const v = value();
          if (v !== undefined) this.set(labels, v);
        },
      }),
    /** One child per value of `label`, as `values` lists them at each scrape. */
    gaugePerLabel: <L extends string>(suffix: string, help: string, label: L, values: () => Iterable<readonly [string, number]>) =>
      new Gauge<L>({
        name: name(suffix),
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          for (const [labelValue, v] of values()) this.set({ [label]: labelValue } as Partial<Record<L, string>>, v);
        },
      }),
  };
}
