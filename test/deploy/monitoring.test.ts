/**
 * deploy/components/monitoring as the production overlay renders it: the ServiceMonitor reaches
 * the broker's ops port through the NetworkPolicy, every alerting rule is complete and points to
 * its runbook in deploy/README.md, and the rules and the Grafana dashboard only use metrics the
 * broker exports (test/deploy/exported-metrics.ts). The dev overlay leaves monitoring out.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseListenAddress } from '../../src/cli/options.js';
import { VERIFY_REASONS } from '../../src/model/task.js';
import { EXPORTED_METRICS, SCRAPE_METRICS } from './exported-metrics.js';
import { listedMetric, metricNamesIn } from './promql.js';
import type { K8sObject, Labels } from './render.js';
import { kustomize, parseManifests, ROOT } from './render.js';

interface LabelSelector {
  matchLabels?: Labels;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}
interface ServiceMonitor extends K8sObject {
  spec: {
    selector: LabelSelector;
    namespaceSelector?: { matchNames?: string[]; any?: boolean };
    endpoints: { port?: string; path?: string; scheme?: string; interval?: string }[];
  };
}
interface Rule {
  alert?: string;
  record?: string;
  expr: string | number;
  for?: string;
  labels?: Labels;
  annotations?: Labels;
}
interface PrometheusRule extends K8sObject {
  spec: { groups: { name: string; rules: Rule[] }[] };
}
interface Service extends K8sObject {
  spec: { selector: Labels; ports: { name: string; port: number; targetPort: string | number }[] };
}
interface Container {
  name: string;
  env?: { name: string; value?: string }[];
  ports?: { name?: string; containerPort: number }[];
}
interface Deployment extends K8sObject {
  spec: { template: { metadata: { labels: Labels }; spec: { containers: Container[] } } };
}
interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
}
interface NetworkPolicy extends K8sObject {
  spec: { podSelector: LabelSelector; ingress?: { from?: NetworkPolicyPeer[]; ports?: { port?: number | string }[] }[] };
}
interface Target {
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  uid: string;
  title: string;
  templating: { list: { type: string; name: string; query: string | { query: string }; datasource?: { uid?: string } }[] };
  panels: Panel[];
}

const LISTED = [...EXPORTED_METRICS, ...SCRAPE_METRICS];
const PROMETHEUS_DURATION = /^(?:\d+(?:ms|[smhdwy]))+$/;
const SEVERITIES = ['critical', 'warning'];

const production = kustomize('deploy/overlays/production').then((text) => parseManifests('production', text));

function one<T extends K8sObject>(objects: readonly K8sObject[], kind: string, name: string): T {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name}, found ${found.length}`);
  return found[0] as T;
}

function selects(selector: LabelSelector | undefined, labels: Labels): boolean {
  if (!selector) return false;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) if (labels[key] !== value) return false;
  for (const req of selector.matchExpressions ?? []) {
    const value = labels[req.key];
    const values = req.values ?? [];
    const ok =
      req.operator === 'In'
        ? value !== undefined && values.includes(value)
        : req.operator === 'NotIn'
          ? value === undefined || !values.includes(value)
          : req.operator === 'Exists'
            ? value !== undefined
            : value === undefined;
    if (!ok) return false;
  }
  return true;
}

/** Whether a NetworkPolicy ingress peer admits a pod (NetworkPolicy semantics: both selectors must match). */
function peerAdmits(peer: NetworkPolicyPeer, policyNamespace: string, pod: { namespace: string; labels: Labels }): boolean {
  const namespaceOk = peer.namespaceSelector
    ? selects(peer.namespaceSelector, { 'kubernetes.io/metadata.name': pod.namespace })
    : pod.namespace === policyNamespace;
  const podOk = peer.podSelector ? selects(peer.podSelector, pod.labels) : true;
  return namespaceOk && podOk;
}

function allRules(rule: PrometheusRule): Rule[] {
  return rule.spec.groups.flatMap((g) => g.rules);
}

/** GitHub's anchor for a Markdown heading. */
function githubAnchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function flattenPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...flattenPanels(p.panels ?? [])]);
}

async function dashboard(): Promise<Dashboard> {
  const configMap = one<K8sObject>(await production, 'ConfigMap', 'task-broker-dashboard');
  expect(configMap.metadata.labels?.grafana_dashboard).toBe('1');
  const text = configMap.data?.['task-broker.json'];
  expect(text, 'the ConfigMap holds the dashboard JSON').toBeDefined();
  return JSON.parse(text ?? '') as Dashboard;
}

describe('the overlays and the monitoring component', () => {
  it('production includes the ServiceMonitor, the rules and the dashboard; dev leaves them out', async () => {
    const objects = await production;
    one(objects, 'ServiceMonitor', 'task-broker');
    one(objects, 'PrometheusRule', 'task-broker');
    one(objects, 'ConfigMap', 'task-broker-dashboard');
    const dev = parseManifests('dev', await kustomize('deploy/overlays/dev'));
    expect(dev.filter((o) => o.apiVersion.startsWith('monitoring.coreos.com/') || o.metadata.name === 'task-broker-dashboard')).toEqual([]);
  });

  it('scrapes /metrics on the port the broker serves its ops endpoints on, through the Service', async () => {
    const objects = await production;
    const monitor = one<ServiceMonitor>(objects, 'ServiceMonitor', 'task-broker');
    const service = one<Service>(objects, 'Service', 'task-broker');
    const deployment = one<Deployment>(objects, 'Deployment', 'task-broker');
    expect(selects(monitor.spec.selector, service.metadata.labels ?? {}), 'the ServiceMonitor selects the Service').toBe(true);
    expect(monitor.spec.namespaceSelector?.matchNames).toContain(service.metadata.namespace);
    expect(monitor.spec.endpoints).toHaveLength(1);
    const endpoint = monitor.spec.endpoints[0];
    expect(endpoint?.path).toBe('/metrics');
    expect(endpoint?.scheme ?? 'http').toBe('http');
    expect(endpoint?.interval).toMatch(PROMETHEUS_DURATION);
    // The named Service port leads to the container port the broker's ops listener binds.
    const servicePort = service.spec.ports.find((p) => p.name === endpoint?.port);
    expect(servicePort, `Service port "${endpoint?.port}"`).toBeDefined();
    const broker = deployment.spec.template.spec.containers.find((c) => c.name === 'task-broker');
    const containerPort = broker?.ports?.find((p) => p.name === servicePort?.targetPort || p.containerPort === servicePort?.targetPort);
    const listen = broker?.env?.find((e) => e.name === 'TASK_BROKER_HTTP_LISTEN')?.value ?? '';
    expect(containerPort?.containerPort).toBe(parseListenAddress(listen).port);
    // Other Services with the same labels (the headless one) have no such port: no second target.
    for (const other of objects.filter((o): o is Service => o.kind === 'Service' && o !== service)) {
      if (selects(monitor.spec.selector, other.metadata.labels ?? {})) expect(other.spec.ports.map((p) => p.name)).not.toContain(endpoint?.port);
    }
  });

  it('lets Prometheus in to the ops port, and no longer any other pod of its namespace', async () => {
    const objects = await production;
    const deployment = one<Deployment>(objects, 'Deployment', 'task-broker');
    const podLabels = deployment.spec.template.metadata.labels;
    const policies = objects.filter((o): o is NetworkPolicy => o.kind === 'NetworkPolicy' && selects((o as NetworkPolicy).spec.podSelector, podLabels));
    const admits = (pod: { namespace: string; labels: Labels }) =>
      policies.some((p) =>
        (p.spec.ingress ?? []).some(
          (rule) =>
            (rule.ports ?? []).some((port) => port.port === 8080) && (rule.from ?? []).some((peer) => peerAdmits(peer, p.metadata.namespace ?? '', pod)),
        ),
      );
    expect(admits({ namespace: 'monitoring', labels: { 'app.kubernetes.io/name': 'prometheus', prometheus: 'k8s' } })).toBe(true);
    expect(admits({ namespace: 'monitoring', labels: { 'app.kubernetes.io/name': 'grafana' } })).toBe(false);
    // The JWKS readers keep their way in.
    expect(admits({ namespace: 'reports', labels: { 'task-broker/jwks-reader': 'true' } })).toBe(true);
  });
});

describe('the alerting rules', () => {
  const load = async () => one<PrometheusRule>(await production, 'PrometheusRule', 'task-broker');

  it('give every alert an expression, a for:, a severity, a summary, a description and a runbook in deploy/README.md', async () => {
    const rules = allRules(await load());
    expect(rules.length).toBeGreaterThanOrEqual(10);
    const readme = await readFile(join(ROOT, 'deploy/README.md'), 'utf8');
    const anchors = new Set([...readme.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => githubAnchor(m[1] ?? '')));
    const names = new Set<string>();
    for (const rule of rules) {
      const name = rule.alert ?? '(a recording rule)';
      expect(rule.alert, 'alerts only, no recording rules').toMatch(/^TaskBroker[A-Za-z]+$/);
      expect(names.has(name), `${name} is unique`).toBe(false);
      names.add(name);
      expect(String(rule.expr).trim(), name).not.toBe('');
      expect(rule.for, name).toMatch(PROMETHEUS_DURATION);
      expect(SEVERITIES, name).toContain(rule.labels?.severity);
      expect(rule.annotations?.summary?.trim(), name).toBeTruthy();
      expect(rule.annotations?.description?.trim(), name).toBeTruthy();
      const runbook = rule.annotations?.runbook_url ?? '';
      expect(runbook, name).toBe(`deploy/README.md#${name.toLowerCase()}`);
      expect(anchors.has(name.toLowerCase()), `deploy/README.md has a "${name}" section`).toBe(true);
    }
  });

  it("use only metrics the broker exports, and Prometheus's own up", async () => {
    for (const rule of allRules(await load())) {
      const names = metricNamesIn(String(rule.expr));
      expect(names.length, rule.alert).toBeGreaterThan(0);
      expect(
        names.filter((n) => listedMetric(n, LISTED) === undefined),
        rule.alert,
      ).toEqual([]);
    }
  });

  it('cover readiness, SVID lifetime, the Workload API, audit latency, the pool, verification failures and revocation lag', async () => {
    const byAlert = new Map(allRules(await load()).map((r) => [r.alert ?? '', String(r.expr).replace(/\s+/g, ' ')]));
    const exprOf = (alert: string) => {
      const expr = byAlert.get(alert);
      if (expr === undefined) throw new Error(`no alert ${alert}`);
      return expr;
    };
    expect(exprOf('TaskBrokerNotReady')).toContain('task_broker_ready');
    expect(exprOf('TaskBrokerDown')).toMatch(/^up\{job="task-broker"\} == 0$/);
    expect(exprOf('TaskBrokerSvidExpiringSoon')).toBe(
      'task_broker_svid_remaining_seconds{job="task-broker"} < 0.2 * (task_broker_svid_age_seconds{job="task-broker"} + task_broker_svid_remaining_seconds{job="task-broker"})',
    );
    expect(exprOf('TaskBrokerWorkloadApiDisconnected')).toBe('task_broker_svid_source_connected{job="task-broker", source="workload_api"} == 0');
    expect(exprOf('TaskBrokerAuditWriteSlow')).toMatch(
      /^histogram_quantile\(0\.99, sum by \([^)]*\ble\b[^)]*\) \(rate\(task_broker_audit_write_duration_seconds_bucket\{[^}]*\}\[5m\]\)\)\) > /,
    );
    expect(exprOf('TaskBrokerDatabasePoolWaiting')).toContain('task_broker_db_pool_waiting_requests');
    expect(exprOf('TaskBrokerDatabasePoolNearlyFull')).toContain(
      '(task_broker_db_pool_connections{job="task-broker"} - task_broker_db_pool_idle_connections{job="task-broker"}) / task_broker_db_pool_max_connections{job="task-broker"} > 0.9',
    );
    expect(exprOf('TaskBrokerVerificationFailuresHigh')).toContain('task_broker_token_verifications_total{job="task-broker", reason!="valid"}');
    expect(exprOf('TaskBrokerRevocationLogStale')).toBe('task_broker_revocation_log_read_age_seconds{job="task-broker"} > 5');
  });

  it("name verification reasons by the reason label's values, as the broker exports them", async () => {
    const rule = allRules(await load()).find((r) => r.alert === 'TaskBrokerVerificationFailuresHigh');
    const description = rule?.annotations?.description ?? '';
    const named = [...description.matchAll(/`([^`]+)`/g)].map((m) => m[1]);
    expect(named).toEqual(expect.arrayContaining(['expired', 'revoked', 'bad-signature', 'malformed']));
    for (const reason of named) expect(VERIFY_REASONS, reason).toContain(reason);
    expect(description).not.toMatch(/\b(EXPIRED|REVOKED|BAD_SIGNATURE|MALFORMED)\b/);
  });

  it('are read by a metric-name reader that sees through selectors, ranges, grouping and functions', () => {
    expect(metricNamesIn('absent(up{job="task-broker"} == 1)')).toEqual(['up']);
    expect(metricNamesIn('sum by (namespace, le) (rate(a_bucket{x="y,z"}[5m])) / on (pod) group_left (node) b offset 1h30m > bool 0.5')).toEqual([
      'a_bucket',
      'b',
    ]);
    expect(metricNamesIn('rate(process_cpu_seconds_total{namespace="$namespace"}[$__rate_interval]) and c unless d')).toEqual([
      'c',
      'd',
      'process_cpu_seconds_total',
    ]);
    expect(listedMetric('task_broker_audit_write_duration_seconds_bucket', LISTED)).toBe('task_broker_audit_write_duration_seconds');
    expect(listedMetric('task_broker_audit_write_seconds_bucket', LISTED)).toBeUndefined();
  });
});

describe('the Grafana dashboard', () => {
  it('is a ConfigMap for the Grafana sidecar holding valid dashboard JSON with a ${datasource} variable', async () => {
    const board = await dashboard();
    expect(board.uid).toBe('task-broker');
    const datasource = board.templating.list.find((v) => v.name === 'datasource');
    expect(datasource).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const panels = flattenPanels(board.panels);
    expect(new Set(panels.map((p) => p.id)).size, 'panel ids are unique').toBe(panels.length);
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource?.uid, panel.title).toBe('${datasource}');
      expect(panel.targets?.length ?? 0, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) expect(target.datasource?.uid ?? panel.datasource?.uid, panel.title).toBe('${datasource}');
    }
    // Panels stay inside the 24-column grid and do not overlap.
    const cells = new Set<string>();
    for (const { title, gridPos: g } of panels) {
      expect(g.x + g.w, title).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          expect(cells.has(`${x},${y}`), `${title} overlaps at ${x},${y}`).toBe(false);
          cells.add(`${x},${y}`);
        }
      }
    }
  });

  it('queries only metrics the broker exports', async () => {
    const board = await dashboard();
    for (const panel of flattenPanels(board.panels)) {
      for (const target of panel.targets ?? []) {
        const names = metricNamesIn(target.expr ?? '');
        expect(names.length, `${panel.title}: ${target.expr}`).toBeGreaterThan(0);
        expect(
          names.filter((n) => listedMetric(n, LISTED) === undefined),
          panel.title,
        ).toEqual([]);
      }
    }
    for (const variable of board.templating.list.filter((v) => v.type === 'query')) {
      const query = typeof variable.query === 'string' ? variable.query : variable.query.query;
      const metric = /^label_values\(([a-z_:][a-z0-9_:]*)/.exec(query)?.[1] ?? '';
      expect(listedMetric(metric, LISTED), variable.name).toBeDefined();
    }
  });

  it('shows traffic, errors, latency, tokens, readiness, the SVID, the Workload API, the database, revocation lag and the process', async () => {
    const board = await dashboard();
    const used = new Set(flattenPanels(board.panels).flatMap((p) => (p.targets ?? []).flatMap((t) => metricNamesIn(t.expr ?? ''))));
    for (const metric of [
      'grpc_server_handled_total',
      'grpc_server_handling_seconds_bucket',
      'task_broker_tokens_issued_total',
      'task_broker_token_verifications_total',
      'task_broker_ready',
      'task_broker_svid_remaining_seconds',
      'task_broker_svid_source_connected',
      'task_broker_audit_write_duration_seconds_bucket',
      'task_broker_db_pool_connections',
      'task_broker_db_pool_waiting_requests',
      'task_broker_revocation_log_read_age_seconds',
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_p99_seconds',
    ]) {
      expect(used.has(metric), metric).toBe(true);
    }
    const exprs = flattenPanels(board.panels).flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ''));
    expect(exprs.some((e) => e.includes('histogram_quantile(0.5,') && e.includes('grpc_server_handling_seconds_bucket'))).toBe(true);
    expect(exprs.some((e) => e.includes('histogram_quantile(0.99,') && e.includes('grpc_server_handling_seconds_bucket'))).toBe(true);
    expect(exprs.some((e) => /sum by \(grpc_method\)/.test(e) && e.includes('grpc_code=~'))).toBe(true);
  });
});
