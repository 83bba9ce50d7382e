/**
 * The monitoring component (deploy/components/monitoring) against what a running broker really
 * exports: every metric an alert of the PrometheusRule or a panel of the Grafana dashboard reads
 * is declared on /metrics (a `# TYPE` line; histogram series `_bucket`, `_sum` and `_count` of a
 * declared histogram), so an alert can never watch a name the broker does not have. Also: the
 * unprefixed process and Node.js metrics and the go-grpc-prometheus names stock dashboards use.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { metricNamesIn } from '../deploy/promql.js';
import { scrape } from './helpers.js';

const MONITORING = fileURLToPath(new URL('../../deploy/components/monitoring/', import.meta.url));
/** Series Prometheus makes itself for every target; not the broker's to export. */
const SYNTHETIC = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);

/** Declared metric families (`# TYPE name type`), with the series names each one exposes. */
function exportedSeries(text: string): Set<string> {
  const series = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    series.add(name);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) series.add(name + suffix);
    if (type === 'summary') for (const suffix of ['_sum', '_count']) series.add(name + suffix);
  }
  return series;
}

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}

async function yamlDocuments(): Promise<{ file: string; doc: Record<string, unknown> }[]> {
  const out: { file: string; doc: Record<string, unknown> }[] = [];
  for (const file of (await readdir(MONITORING)).filter((f) => /\.ya?ml$/.test(f))) {
    for (const d of parseAllDocuments(await readFile(join(MONITORING, file), 'utf8'))) out.push({ file, doc: d.toJS() as Record<string, unknown> });
  }
  return out;
}

async function alertRules(): Promise<Rule[]> {
  const rules: Rule[] = [];
  for (const { doc } of await yamlDocuments()) {
    if (doc?.kind !== 'PrometheusRule') continue;
    const groups = (doc.spec as { groups?: { rules?: Rule[] }[] } | undefined)?.groups ?? [];
    for (const g of groups) rules.push(...(g.rules ?? []));
  }
  return rules;
}

async function dashboardExprs(): Promise<{ panel: string; expr: string }[]> {
  const out: { panel: string; expr: string }[] = [];
  const walk = (node: unknown, panel: string) => {
    if (Array.isArray(node)) for (const n of node) walk(n, panel);
    else if (node && typeof node === 'object') {
      const o = node as Record<string, unknown>;
      const title = typeof o.title === 'string' ? o.title : panel;
      if (typeof o.expr === 'string' && o.expr.trim()) out.push({ panel: title, expr: o.expr });
      for (const v of Object.values(o)) walk(v, title);
    }
  };
  const files = await listJson(MONITORING);
  for (const file of files) walk(JSON.parse(await readFile(file, 'utf8')), file);
  return out;
}

async function listJson(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listJson(path)));
    else if (entry.name.endsWith('.json')) out.push(path);
  }
  return out;
}

describe('metricNamesIn (the PromQL reader of test/deploy/promql.ts this test relies on)', () => {
  it('finds metric names and nothing else', () => {
    expect(
      metricNamesIn('histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{grpc_type="unary"}[5m]))) > 0.25'),
    ).toEqual(['grpc_server_handling_seconds_bucket']);
    expect(metricNamesIn('task_broker_svid_remaining_seconds < 0.2 * (task_broker_svid_age_seconds + task_broker_svid_remaining_seconds)').sort()).toEqual([
      'task_broker_svid_age_seconds',
      'task_broker_svid_remaining_seconds',
    ]);
    expect(metricNamesIn('up{job="task-broker"} == 0 or absent(up{job="task-broker"})')).toEqual(['up']);
    expect(metricNamesIn('sum(rate(a_total{reason!="valid"}[$__rate_interval])) / sum(rate(a_total[5m])) > 1e-3 and on (pod) b == 1')).toEqual([
      'a_total',
      'b',
    ]);
  });
});

describe('the monitoring component against a running broker', () => {
  let t: TestBroker;
  let text: string;
  let exported: Set<string>;
  beforeAll(async () => {
    t = await startTestBroker('postgres');
    // One call so the per-method series exist too (the families are declared either way).
    await (await t.client(WORKER)).whoAmI();
    text = await scrape(t);
    exported = exportedSeries(text);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('exports the process and Node.js defaults unprefixed, and the gRPC server metrics by their go-grpc-prometheus names', () => {
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'process_start_time_seconds',
      'nodejs_eventloop_lag_p99_seconds',
      'nodejs_heap_size_used_bytes',
      'nodejs_gc_duration_seconds_bucket',
      'grpc_server_started_total',
      'grpc_server_handled_total',
      'grpc_server_handling_seconds_bucket',
    ])
      expect(exported, name).toContain(name);
    expect(text).toMatch(/^grpc_server_handled_total\{grpc_service="taskbroker\.v1\.TaskBroker",grpc_method="WhoAmI",grpc_type="unary",grpc_code="OK"\} 1$/m);
    expect(text).not.toMatch(/^task_broker_(process|nodejs)_/m);
  });

  it('every alert of the PrometheusRule reads only metrics the broker exports', async () => {
    const rules = await alertRules();
    const alerts = rules.filter((r) => r.alert).map((r) => r.alert);
    // The alerts the issue asks for are there (names as in the rule file).
    expect(alerts.length).toBeGreaterThanOrEqual(7);
    const missing: string[] = [];
    for (const rule of rules) {
      const names = metricNamesIn(rule.expr);
      expect(names.length, `${rule.alert ?? rule.record} reads no metric`).toBeGreaterThan(0);
      for (const name of names) if (!SYNTHETIC.has(name) && !exported.has(name)) missing.push(`${rule.alert ?? rule.record}: ${name}`);
    }
    expect(missing).toEqual([]);
  });

  it('every panel of the Grafana dashboard reads only metrics the broker exports', async () => {
    const exprs = await dashboardExprs();
    expect(exprs.length).toBeGreaterThan(5);
    const missing = exprs.flatMap(({ panel, expr }) =>
      metricNamesIn(expr)
        .filter((name) => !SYNTHETIC.has(name) && !exported.has(name))
        .map((name) => `${panel}: ${name}`),
    );
    expect(missing).toEqual([]);
  });
});
