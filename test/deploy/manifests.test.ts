/**
 * The Kubernetes manifests in deploy/, rendered for real with kubectl's built-in kustomize, and
 * the Dockerfile: the properties a platform team relies on when it applies them. Each overlay
 * is rendered once and every test reads the rendered objects, never the source files, so what
 * is checked is what `kubectl apply -k` would send.
 *
 * kubectl is required: without it these tests fail (with a message saying so), never skip.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { adminCommands } from '../../src/cli/admin/commands.js';
import { parseDuration, parseListenAddress } from '../../src/cli/options.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import type { DockerStage } from './dockerfile.js';
import { args, copiesFrom, deletedDependencies, instructions, labels, loadDockerfile } from './dockerfile.js';
import type { K8sObject, Labels } from './render.js';
import { kustomize, parseManifests, ROOT } from './render.js';

const NAMESPACE = 'task-broker';
const CSI_DRIVER = 'csi.spiffe.io';
const UID = 65532;
/** What the policy and the example ClusterSPIFFEID are written for (deploy/README.md walk-through). */
const TRUST_DOMAIN = 'example.org';

// ---------------------------------------------------------------------------------------------
// The shapes read from the rendered YAML (only the fields these tests look at).

interface LabelSelector {
  matchLabels?: Labels;
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[];
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string } } & Record<string, unknown>;
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  runAsGroup?: number;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  privileged?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
interface HttpProbe {
  httpGet?: { path: string; port: string | number };
  periodSeconds?: number;
  failureThreshold?: number;
}
type Quantities = Partial<Record<'cpu' | 'memory', string | number>>;
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  resources?: { requests?: Quantities; limits?: Quantities };
  securityContext?: SecurityContext;
  startupProbe?: HttpProbe;
  livenessProbe?: HttpProbe;
  readinessProbe?: HttpProbe;
  lifecycle?: { preStop?: { sleep?: { seconds: number } } };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string }[];
}
interface Volume {
  name: string;
  csi?: { driver: string; readOnly?: boolean };
  configMap?: { name: string };
  secret?: { secretName: string; items?: { key: string; path: string }[] };
  emptyDir?: Record<string, unknown>;
  hostPath?: unknown;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  securityContext?: SecurityContext;
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  enableServiceLinks?: boolean;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  restartPolicy?: string;
  terminationGracePeriodSeconds?: number;
  topologySpreadConstraints?: { maxSkew: number; topologyKey: string; whenUnsatisfiable: string; labelSelector?: LabelSelector }[];
}
interface PodTemplate {
  metadata: { labels: Labels };
  spec: PodSpec;
}
interface Deployment extends K8sObject {
  spec: { replicas: number; selector: LabelSelector; template: PodTemplate; strategy?: { rollingUpdate?: { maxUnavailable?: number | string } } };
}
interface Job extends K8sObject {
  spec: { backoffLimit?: number; template: PodTemplate };
}
interface Service extends K8sObject {
  spec: { selector: Labels; clusterIP?: string; ports: { name: string; port: number; targetPort: string | number; protocol?: string }[] };
}
interface PodDisruptionBudget extends K8sObject {
  spec: { selector: LabelSelector; maxUnavailable?: number | string; minAvailable?: number | string };
}
interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: { cidr: string };
}
interface NetworkPolicyRule {
  from?: NetworkPolicyPeer[];
  to?: NetworkPolicyPeer[];
  ports?: { port?: number | string; protocol?: string }[];
}
interface NetworkPolicy extends K8sObject {
  spec: { podSelector: LabelSelector; policyTypes?: string[]; ingress?: NetworkPolicyRule[]; egress?: NetworkPolicyRule[] };
}
interface HorizontalPodAutoscaler extends K8sObject {
  spec: {
    scaleTargetRef: { apiVersion: string; kind: string; name: string };
    minReplicas: number;
    maxReplicas: number;
    metrics: { type: string; resource?: { name: string; target: { type: string; averageUtilization?: number } } }[];
  };
}
interface ClusterSpiffeId extends K8sObject {
  spec: { spiffeIDTemplate: string; className?: string; podSelector?: LabelSelector; namespaceSelector?: LabelSelector };
}
interface CnpgCluster extends K8sObject {
  spec: { instances: number; postgresql?: { synchronous?: { number?: number } } };
}

// ---------------------------------------------------------------------------------------------
// Rendering

class Rendered {
  constructor(
    readonly overlay: string,
    readonly text: string,
    readonly objects: readonly K8sObject[],
  ) {}

  all<T extends K8sObject>(kind: string): T[] {
    return this.objects.filter((o) => o.kind === kind) as T[];
  }

  one<T extends K8sObject>(kind: string, name: string): T {
    const found = this.objects.filter((o) => o.kind === kind && o.metadata.name === name);
    if (found.length !== 1) throw new Error(`${this.overlay}: expected exactly one ${kind} "${name}", found ${found.length}`);
    return found[0] as T;
  }

  get deployment(): Deployment {
    return this.one<Deployment>('Deployment', 'task-broker');
  }

  get job(): Job {
    return this.one<Job>('Job', 'task-broker-migrate');
  }

  /** The broker container of the Deployment. */
  get broker(): Container {
    return containerNamed(this.deployment.spec.template.spec, 'task-broker');
  }

  get podLabels(): Labels {
    return this.deployment.spec.template.metadata.labels;
  }
}

const cache = new Map<string, Promise<Rendered>>();

/** Renders an overlay once per test run; every test awaits it, so a missing kubectl fails each test. */
function rendered(overlay: string): Promise<Rendered> {
  let promise = cache.get(overlay);
  if (!promise) {
    promise = kustomize(`deploy/overlays/${overlay}`).then((text) => new Rendered(overlay, text, parseManifests(overlay, text)));
    cache.set(overlay, promise);
  }
  return promise;
}

// ---------------------------------------------------------------------------------------------
// Helpers with Kubernetes semantics

function containerNamed(pod: PodSpec, name: string): Container {
  const container = pod.containers.find((c) => c.name === name);
  if (!container) throw new Error(`no container named ${name}`);
  return container;
}

function allContainers(pod: PodSpec): Container[] {
  return [...(pod.initContainers ?? []), ...pod.containers];
}

/** Label selector semantics; an absent selector selects nothing, an empty one everything. */
function selects(selector: LabelSelector | undefined, labels: Labels): boolean {
  if (!selector) return false;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (labels[key] !== value) return false;
  }
  for (const req of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, req.key);
    const value = labels[req.key];
    const values = req.values ?? [];
    const ok =
      req.operator === 'In'
        ? has && values.includes(value ?? '')
        : req.operator === 'NotIn'
          ? !has || !values.includes(value ?? '')
          : req.operator === 'Exists'
            ? has
            : !has;
    if (!ok) return false;
  }
  return true;
}

/** A ClusterSPIFFEID without a selector applies to every pod (or namespace). */
function spiffeIdApplies(csid: ClusterSpiffeId, podLabels: Labels, namespaceLabels: Labels): boolean {
  const podOk = csid.spec.podSelector === undefined || selects(csid.spec.podSelector, podLabels);
  const nsOk = csid.spec.namespaceSelector === undefined || selects(csid.spec.namespaceSelector, namespaceLabels);
  return podOk && nsOk;
}

/** The labels a namespace has once created (the API server adds kubernetes.io/metadata.name). */
function namespaceLabels(r: Rendered, name: string): Labels {
  const ns = r.objects.find((o) => o.kind === 'Namespace' && o.metadata.name === name);
  return { ...(ns?.metadata.labels ?? {}), 'kubernetes.io/metadata.name': name };
}

function renderSpiffeIdTemplate(template: string, vars: { trustDomain: string; namespace: string; serviceAccount: string }): string {
  return template
    .replace(/\{\{\s*\.TrustDomain\s*\}\}/g, vars.trustDomain)
    .replace(/\{\{\s*\.PodMeta\.Namespace\s*\}\}/g, vars.namespace)
    .replace(/\{\{\s*\.PodSpec\.ServiceAccountName\s*\}\}/g, vars.serviceAccount);
}

/** The container's effective security settings: container-level fields override the pod's. */
function effectiveSecurity(pod: PodSpec, container: Container): SecurityContext {
  const podLevel = pod.securityContext ?? {};
  const own = container.securityContext ?? {};
  return {
    ...own,
    runAsNonRoot: own.runAsNonRoot ?? podLevel.runAsNonRoot,
    runAsUser: own.runAsUser ?? podLevel.runAsUser,
    runAsGroup: own.runAsGroup ?? podLevel.runAsGroup,
    seccompProfile: own.seccompProfile ?? podLevel.seccompProfile,
  };
}

/** CPU in cores, memory in bytes. */
function quantity(q: string | number | undefined, what: string): number {
  if (q === undefined) throw new Error(`${what} is not set`);
  if (typeof q === 'number') return q;
  const match = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!match) throw new Error(`${what}: unrecognised quantity "${q}"`);
  const units: Record<string, number> = { m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
  return Number(match[1]) * (match[2] ? (units[match[2]] ?? Number.NaN) : 1);
}

function envOf(container: Container): Map<string, EnvVar> {
  return new Map((container.env ?? []).map((e) => [e.name, e]));
}

function envValue(container: Container, name: string): string | undefined {
  return envOf(container).get(name)?.value;
}

/** `$(NAME)` references in an env value, as Kubernetes expands them. */
function references(value: string): string[] {
  return [...value.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)].map((m) => m[1] ?? '');
}

/**
 * Where an env var's value comes from: the Secret keys it is read from (directly or through the
 * `$(VAR)` references of its value) and the literal text around them. Throws when a reference
 * would not expand (Kubernetes leaves `$(VAR)` as is unless VAR is defined earlier in the list).
 */
function envSources(container: Container, name: string): { secretRefs: { name: string; key: string }[]; literal: string; value?: string } {
  const env = container.env ?? [];
  const index = env.findIndex((e) => e.name === name);
  const variable = env[index];
  if (!variable) throw new Error(`${container.name}: env ${name} is not set`);
  if (variable.valueFrom?.secretKeyRef) return { secretRefs: [variable.valueFrom.secretKeyRef], literal: '' };
  const value = variable.value ?? '';
  const secretRefs: { name: string; key: string }[] = [];
  for (const ref of references(value)) {
    const earlier = env.slice(0, index).find((e) => e.name === ref);
    if (!earlier) throw new Error(`${container.name}: env ${name} refers to $(${ref}), which is not defined before it, so it would not expand`);
    if (earlier.valueFrom?.secretKeyRef) secretRefs.push(earlier.valueFrom.secretKeyRef);
  }
  const literal = value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_m, ref: string) => env.slice(0, index).find((e) => e.name === ref)?.value ?? '');
  return { secretRefs, literal, value };
}

function containerPort(container: Container, port: string | number): number | undefined {
  if (typeof port === 'number') return container.ports?.some((p) => p.containerPort === port) ? port : undefined;
  return container.ports?.find((p) => p.name === port)?.containerPort;
}

function ruleAllowsPort(rule: NetworkPolicyRule, port: number, protocol: string, container?: Container): boolean {
  if (!rule.ports || rule.ports.length === 0) return true;
  return rule.ports.some((p) => {
    if ((p.protocol ?? 'TCP') !== protocol) return false;
    if (p.port === undefined) return true;
    if (typeof p.port === 'number') return p.port === port;
    return container !== undefined && containerPort(container, p.port) === port;
  });
}

function shutdownGraceSeconds(container: Container): number {
  const args = container.args ?? [];
  const flag = args.findIndex((a) => a === '--shutdown-grace' || a.startsWith('--shutdown-grace='));
  const text = flag >= 0 ? (args[flag]?.includes('=') ? args[flag]?.split('=')[1] : args[flag + 1]) : envValue(container, 'TASK_BROKER_SHUTDOWN_GRACE');
  return parseDuration(text ?? '20s', 'shutdown grace') / 1000;
}

// ---------------------------------------------------------------------------------------------

const OVERLAYS = [
  { overlay: 'dev', replicas: 1, hpaMin: 1, hpaMax: 2, dbInstances: 1, logLevel: 'debug' },
  { overlay: 'production', replicas: 3, hpaMin: 3, hpaMax: 10, dbInstances: 3, logLevel: 'info' },
] as const;

describe.each(OVERLAYS)('deploy/overlays/$overlay', (expected) => {
  const load = () => rendered(expected.overlay);

  it('renders to well-formed objects, each once, namespaced ones in the task-broker namespace', async () => {
    const r = await load();
    expect(r.objects.length).toBeGreaterThan(10);
    const ids = r.objects.map((o) => `${o.apiVersion}/${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
    expect(new Set(ids).size).toBe(ids.length);
    const clusterScoped = new Set(['Namespace', 'ClusterSPIFFEID', 'ClusterFederatedTrustDomain', 'ClusterRole', 'ClusterRoleBinding']);
    for (const o of r.objects) {
      if (clusterScoped.has(o.kind)) expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBeUndefined();
      else expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe(NAMESPACE);
    }
    const ns = r.one<K8sObject>('Namespace', NAMESPACE);
    expect(ns.metadata.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
  });

  it(`runs ${expected.replicas} broker replica(s), never below that during a rollout`, async () => {
    const { deployment } = await load();
    expect(deployment.spec.replicas).toBe(expected.replicas);
    expect(selects(deployment.spec.selector, deployment.spec.template.metadata.labels)).toBe(true);
    expect(deployment.spec.strategy?.rollingUpdate?.maxUnavailable).toBe(0);
  });

  it('runs every container (broker and migration Job) non-root, read-only, without privileges or capabilities', async () => {
    const r = await load();
    for (const workload of [r.deployment, r.job]) {
      const pod = workload.spec.template.spec;
      expect(pod.automountServiceAccountToken, `${workload.kind}: no API token`).toBe(false);
      expect(pod.enableServiceLinks, `${workload.kind}: no TASK_BROKER_* service variables`).toBe(false);
      expect(pod.hostNetwork ?? false).toBe(false);
      expect(pod.hostPID ?? false).toBe(false);
      expect(pod.hostIPC ?? false).toBe(false);
      expect((pod.volumes ?? []).filter((v) => v.hostPath !== undefined)).toEqual([]);
      for (const container of allContainers(pod)) {
        const sc = effectiveSecurity(pod, container);
        const where = `${workload.kind}/${container.name}`;
        expect(sc.runAsNonRoot, where).toBe(true);
        expect(sc.runAsUser, where).toBe(UID);
        expect(sc.runAsGroup, where).toBe(UID);
        expect(sc.readOnlyRootFilesystem, where).toBe(true);
        expect(sc.allowPrivilegeEscalation, where).toBe(false);
        expect(sc.privileged ?? false, where).toBe(false);
        expect(sc.capabilities?.drop, where).toContain('ALL');
        expect(sc.capabilities?.add ?? [], where).toEqual([]);
        expect(sc.seccompProfile?.type, where).toBe('RuntimeDefault');
      }
    }
  });

  it('gives every container CPU and memory requests and limits, requests within limits', async () => {
    const r = await load();
    for (const workload of [r.deployment, r.job]) {
      for (const container of allContainers(workload.spec.template.spec)) {
        for (const resource of ['cpu', 'memory'] as const) {
          const where = `${workload.kind}/${container.name} ${resource}`;
          const request = quantity(container.resources?.requests?.[resource], `${where} request`);
          const limit = quantity(container.resources?.limits?.[resource], `${where} limit`);
          expect(request, where).toBeGreaterThan(0);
          expect(request, where).toBeLessThanOrEqual(limit);
        }
      }
    }
    if (expected.overlay === 'production') {
      // Guaranteed QoS for the broker in production.
      const { requests, limits } = r.broker.resources ?? {};
      expect(quantity(requests?.cpu, 'cpu request')).toBe(quantity(limits?.cpu, 'cpu limit'));
      expect(quantity(requests?.memory, 'memory request')).toBe(quantity(limits?.memory, 'memory limit'));
    }
  });

  it('probes liveness on /healthz, readiness on /readyz and startup on the HTTP ops port the broker listens on', async () => {
    const r = await load();
    const broker = r.broker;
    const opsPort = parseListenAddress(envValue(broker, 'TASK_BROKER_HTTP_LISTEN') ?? '0.0.0.0:8080').port;
    expect(opsPort).toBe(8080);
    const probes = { liveness: broker.livenessProbe, readiness: broker.readinessProbe, startup: broker.startupProbe };
    expect(probes.liveness?.httpGet?.path).toBe('/healthz');
    expect(probes.readiness?.httpGet?.path).toBe('/readyz');
    expect(probes.startup?.httpGet?.path).toMatch(/^\/(healthz|readyz)$/);
    for (const [kind, probe] of Object.entries(probes)) {
      expect(probe?.httpGet, kind).toBeDefined();
      expect(containerPort(broker, probe?.httpGet?.port ?? -1), `${kind} probe port`).toBe(opsPort);
    }
    // Enough start-up time for the SVID to arrive from the agent and the database to answer.
    const startup = probes.startup ?? {};
    expect((startup.periodSeconds ?? 10) * (startup.failureThreshold ?? 3)).toBeGreaterThanOrEqual(60);
    const grpcPort = parseListenAddress(envValue(broker, 'TASK_BROKER_LISTEN') ?? '0.0.0.0:8443').port;
    expect(containerPort(broker, 'grpc')).toBe(grpcPort);
    expect(grpcPort).toBe(8443);
  });

  it('spreads broker pods across zones and nodes', async () => {
    const r = await load();
    const constraints = r.deployment.spec.template.spec.topologySpreadConstraints ?? [];
    for (const key of ['topology.kubernetes.io/zone', 'kubernetes.io/hostname']) {
      const constraint = constraints.find((c) => c.topologyKey === key);
      expect(constraint, key).toBeDefined();
      expect(constraint?.maxSkew, key).toBe(1);
      expect(selects(constraint?.labelSelector, r.podLabels), `${key} selector counts the broker pods`).toBe(true);
    }
  });

  it('mounts the SPIFFE Workload API read-only from the CSI driver, where SPIFFE_ENDPOINT_SOCKET points', async () => {
    const r = await load();
    const pod = r.deployment.spec.template.spec;
    const volumes = (pod.volumes ?? []).filter((v) => v.csi?.driver === CSI_DRIVER);
    expect(volumes).toHaveLength(1);
    const volume = volumes[0];
    expect(volume?.csi?.readOnly).toBe(true);
    const mount = r.broker.volumeMounts?.find((m) => m.name === volume?.name);
    expect(mount?.readOnly).toBe(true);
    const socket = envValue(r.broker, 'SPIFFE_ENDPOINT_SOCKET') ?? '';
    expect(socket).toMatch(/^unix:\/\/\//);
    const socketPath = socket.slice('unix://'.length);
    expect(posix.dirname(socketPath)).toBe(mount?.mountPath);
    expect(posix.basename(socketPath)).toMatch(/\.sock$/);
    // The migration Job needs no identity: no Workload API there.
    expect((r.job.spec.template.spec.volumes ?? []).some((v) => v.csi?.driver === CSI_DRIVER)).toBe(false);
  });

  it('registers the broker pods, and only them, with a ClusterSPIFFEID giving a namespace/service-account SPIFFE ID', async () => {
    const r = await load();
    const nsLabels = namespaceLabels(r, NAMESPACE);
    const csids = r.all<ClusterSpiffeId>('ClusterSPIFFEID');
    for (const c of csids) expect(c.apiVersion).toBe('spire.spiffe.io/v1alpha1');
    const forBroker = csids.filter((c) => spiffeIdApplies(c, r.podLabels, nsLabels));
    expect(forBroker.map((c) => c.metadata.name)).toEqual(['task-broker']);
    const broker = forBroker[0];
    expect(broker?.spec.podSelector?.matchLabels ?? {}, 'selects by pod labels, not every pod of the namespace').not.toEqual({});
    const serviceAccount = r.deployment.spec.template.spec.serviceAccountName ?? 'default';
    r.one<K8sObject>('ServiceAccount', serviceAccount);
    const id = SpiffeId.parse(renderSpiffeIdTemplate(broker?.spec.spiffeIDTemplate ?? '', { trustDomain: TRUST_DOMAIN, namespace: NAMESPACE, serviceAccount }));
    expect(id.toString()).toBe(`spiffe://${TRUST_DOMAIN}/ns/${NAMESPACE}/sa/task-broker`);
    // The migration Job's pods get no identity, and the client example does not catch the broker.
    expect(csids.filter((c) => spiffeIdApplies(c, r.job.spec.template.metadata.labels, nsLabels))).toEqual([]);
    // All of them are for the same controller-manager class.
    expect(new Set(csids.map((c) => c.spec.className)).size).toBe(1);
  });

  it('has an example ClusterSPIFFEID for workloads that yields the caller IDs the policy names', async () => {
    const r = await load();
    const clients = r.one<ClusterSpiffeId>('ClusterSPIFFEID', 'task-broker-clients');
    const demoPod = { 'task-broker/client': 'true', app: 'worker' };
    expect(spiffeIdApplies(clients, demoPod, { 'kubernetes.io/metadata.name': 'demo' })).toBe(true);
    expect(spiffeIdApplies(clients, { app: 'worker' }, { 'kubernetes.io/metadata.name': 'demo' }), 'opt-in by label').toBe(false);
    const id = renderSpiffeIdTemplate(clients.spec.spiffeIDTemplate, { trustDomain: TRUST_DOMAIN, namespace: 'demo', serviceAccount: 'worker' });
    const policy = parsePolicy(policyText(r), 'task-broker-policy');
    const decision = policy.decide({
      caller: SpiffeId.parse(id),
      action: 'report.read',
      audience: `spiffe://${TRUST_DOMAIN}/ns/demo/sa/reports`,
      scopes: ['reports:read'],
      taskTtlSeconds: 300,
    });
    expect(decision).toMatchObject({ allowed: true, rule: 'demo-report-read' });
  });

  it('exposes gRPC on 8443 and the ops port on 8080 through Services that select the broker pods', async () => {
    const r = await load();
    const service = r.one<Service>('Service', 'task-broker');
    expect(Object.keys(service.spec.selector).length).toBeGreaterThan(0);
    expect(selects({ matchLabels: service.spec.selector }, r.podLabels)).toBe(true);
    // The migration Job's pods must never receive traffic.
    expect(selects({ matchLabels: service.spec.selector }, r.job.spec.template.metadata.labels)).toBe(false);
    const byName = new Map(service.spec.ports.map((p) => [p.name, p]));
    expect(byName.get('grpc')?.port).toBe(8443);
    expect(byName.get('http')?.port).toBe(8080);
    for (const svc of r.all<Service>('Service')) {
      if (!selects({ matchLabels: svc.spec.selector }, r.podLabels)) continue;
      for (const port of svc.spec.ports) {
        expect(containerPort(r.broker, port.targetPort), `${svc.metadata.name}:${port.name} reaches a container port`).toBe(port.port);
      }
    }
  });

  it('has a PodDisruptionBudget over the broker pods that lets a drain proceed one pod at a time', async () => {
    const r = await load();
    const pdbs = r.all<PodDisruptionBudget>('PodDisruptionBudget').filter((p) => selects(p.spec.selector, r.podLabels));
    expect(pdbs).toHaveLength(1);
    const spec = pdbs[0]?.spec;
    if (spec?.maxUnavailable !== undefined) {
      expect(spec.maxUnavailable).toBe(1);
    } else {
      expect(typeof spec?.minAvailable).toBe('number');
      expect(spec?.minAvailable).toBeLessThan(r.deployment.spec.replicas);
      expect(spec?.minAvailable).toBeGreaterThanOrEqual(r.deployment.spec.replicas - 1);
    }
  });

  it('limits the broker pods to gRPC and ops ingress, and DNS and PostgreSQL egress', async () => {
    const r = await load();
    const policies = r.all<NetworkPolicy>('NetworkPolicy').filter((p) => selects(p.spec.podSelector, r.podLabels));
    expect(policies.length).toBeGreaterThan(0);
    for (const p of policies) expect(p.spec.policyTypes).toEqual(expect.arrayContaining(['Ingress', 'Egress']));
    const ingress = policies.flatMap((p) => p.spec.ingress ?? []);
    const egress = policies.flatMap((p) => p.spec.egress ?? []);
    expect(ingress.some((rule) => ruleAllowsPort(rule, 8443, 'TCP', r.broker))).toBe(true);
    expect(ingress.some((rule) => ruleAllowsPort(rule, 8080, 'TCP', r.broker))).toBe(true);
    // Nothing else is open: every ingress rule names its ports, and they are these two.
    for (const rule of ingress) {
      expect(rule.ports?.length, 'ingress rule without ports opens every port').toBeGreaterThan(0);
      for (const port of rule.ports ?? []) {
        expect([8443, 8080]).toContain(typeof port.port === 'string' ? containerPort(r.broker, port.port) : port.port);
      }
    }
    expect(egress.some((rule) => ruleAllowsPort(rule, 53, 'UDP'))).toBe(true);
    expect(egress.some((rule) => ruleAllowsPort(rule, 5432, 'TCP'))).toBe(true);
    expect(
      egress.every((rule) => (rule.ports?.length ?? 0) > 0),
      'no egress rule opens every port',
    ).toBe(true);
    // With CloudNativePG, PostgreSQL egress goes to that cluster's pods only.
    const cluster = r.all<CnpgCluster>('Cluster')[0];
    const pgRules = egress.filter((rule) => ruleAllowsPort(rule, 5432, 'TCP'));
    for (const rule of pgRules) {
      expect(rule.to?.length ?? 0).toBeGreaterThan(0);
      for (const peer of rule.to ?? []) expect(selects(peer.podSelector, { 'cnpg.io/cluster': cluster?.metadata.name ?? '' })).toBe(true);
    }
    // The migration Job is fenced too.
    const jobLabels = r.job.spec.template.metadata.labels;
    const jobPolicies = r.all<NetworkPolicy>('NetworkPolicy').filter((p) => selects(p.spec.podSelector, jobLabels));
    expect(jobPolicies.flatMap((p) => p.spec.egress ?? []).some((rule) => ruleAllowsPort(rule, 5432, 'TCP'))).toBe(true);
    expect(jobPolicies.flatMap((p) => p.spec.ingress ?? [])).toEqual([]);
  });

  it(`autoscales the Deployment on CPU between ${expected.hpaMin} and ${expected.hpaMax}, never below its replicas`, async () => {
    const r = await load();
    const hpas = r.all<HorizontalPodAutoscaler>('HorizontalPodAutoscaler');
    expect(hpas).toHaveLength(1);
    const hpa = hpas[0];
    expect(hpa?.apiVersion).toBe('autoscaling/v2');
    expect(hpa?.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: r.deployment.metadata.name });
    expect(hpa?.spec.minReplicas).toBe(expected.hpaMin);
    expect(hpa?.spec.maxReplicas).toBe(expected.hpaMax);
    expect(hpa?.spec.minReplicas).toBeGreaterThanOrEqual(r.deployment.spec.replicas);
    expect(hpa?.spec.maxReplicas).toBeGreaterThanOrEqual(hpa?.spec.minReplicas ?? Infinity);
    expect(hpa?.spec.metrics.some((m) => m.type === 'Resource' && m.resource?.name === 'cpu')).toBe(true);
  });

  it('runs migrations in a Job with the broker image and the same database settings', async () => {
    const r = await load();
    const pod = r.job.spec.template.spec;
    expect(pod.containers).toHaveLength(1);
    const migrate = pod.containers[0] as Container;
    expect([...(migrate.command ?? []), ...(migrate.args ?? [])]).toEqual(['migrate']);
    expect(migrate.image).toBe(r.broker.image);
    expect(['Never', 'OnFailure']).toContain(pod.restartPolicy);
    expect(r.job.spec.backoffLimit).toBeGreaterThan(0);
    expect(envSources(migrate, 'TASK_BROKER_DATABASE_URL')).toEqual(envSources(r.broker, 'TASK_BROKER_DATABASE_URL'));
    // The broker itself does not migrate: one Job does, under an advisory lock.
    expect(envValue(r.broker, 'TASK_BROKER_MIGRATE') ?? 'false').toBe('false');
    expect(r.broker.args ?? []).not.toContain('--migrate');
  });

  it('mounts a policy ConfigMap as a directory (so updates reach the pod) holding a valid default-deny policy', async () => {
    const r = await load();
    const path = envValue(r.broker, 'TASK_BROKER_POLICY') ?? '';
    expect(path).toMatch(/^\//);
    const mount = r.broker.volumeMounts?.find((m) => m.mountPath === posix.dirname(path));
    expect(mount, 'the policy directory is mounted').toBeDefined();
    expect(mount?.subPath, 'a subPath mount never sees ConfigMap updates').toBeUndefined();
    const volume = r.deployment.spec.template.spec.volumes?.find((v) => v.name === mount?.name);
    const configMap = r.one<K8sObject>('ConfigMap', volume?.configMap?.name ?? '(no configMap volume)');
    const text = configMap.data?.[posix.basename(path)];
    expect(text, 'the ConfigMap holds the file the broker reads').toBeDefined();
    const policy = parsePolicy(text ?? '', `ConfigMap/${configMap.metadata.name}`);
    expect(policy.rules.length).toBeGreaterThan(0);
    expect(policy.admins.length).toBeGreaterThan(0);
    // Default deny: someone no rule names gets nothing, not even with a catch-all request.
    const stranger = SpiffeId.parse(`spiffe://${TRUST_DOMAIN}/ns/elsewhere/sa/stranger`);
    expect(
      policy.decide({ caller: stranger, action: 'report.read', audience: `spiffe://${TRUST_DOMAIN}/ns/demo/sa/reports`, scopes: ['reports:read'] }).allowed,
    ).toBe(false);
    expect(policy.adminDecision(stranger).allowed).toBe(false);
    // And a named caller gets only what its rule says.
    const worker = SpiffeId.parse(`spiffe://${TRUST_DOMAIN}/ns/demo/sa/worker`);
    expect(
      policy.decide({ caller: worker, action: 'report.delete', audience: `spiffe://${TRUST_DOMAIN}/ns/demo/sa/reports`, scopes: ['reports:read'] }).allowed,
    ).toBe(false);
    expect(
      policy.decide({ caller: worker, action: 'report.read', audience: `spiffe://${TRUST_DOMAIN}/ns/demo/sa/reports`, scopes: ['reports:write'] }).allowed,
    ).toBe(false);
    expect(policy.adminDecision(worker).allowed).toBe(false);
  });

  it('takes the key-encryption key from a Secret that is not part of the manifests, and ships no key material', async () => {
    const r = await load();
    const env = envOf(r.broker);
    expect(env.has('TASK_BROKER_KEK') !== env.has('TASK_BROKER_KEK_FILE'), 'exactly one KEK source').toBe(true);
    let kekSecret: string | undefined;
    if (env.has('TASK_BROKER_KEK')) {
      const kek = env.get('TASK_BROKER_KEK');
      expect(kek?.value, 'no literal KEK').toBeUndefined();
      kekSecret = kek?.valueFrom?.secretKeyRef?.name;
    } else {
      const file = env.get('TASK_BROKER_KEK_FILE')?.value ?? '';
      const mount = r.broker.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`));
      kekSecret = r.deployment.spec.template.spec.volumes?.find((v) => v.name === mount?.name)?.secret?.secretName;
    }
    expect(kekSecret, 'the KEK comes from a Secret reference').toBeTruthy();
    expect(
      (r.broker.args ?? []).some((a) => a.startsWith('--kek')),
      'no KEK on the command line',
    ).toBe(false);
    // The Secret is created out of band (deploy/README.md), never rendered from the repository.
    expect(r.objects.filter((o) => o.kind === 'Secret' && o.metadata.name === kekSecret)).toEqual([]);
    for (const secret of r.all<K8sObject>('Secret')) {
      const values = [...Object.values(secret.data ?? {}), ...Object.values(secret.stringData ?? {})];
      expect(
        values.filter((v) => v.length > 0),
        `Secret/${secret.metadata.name} carries values`,
      ).toEqual([]);
    }
    // No 32-byte base64 key and no PEM private key anywhere in the output.
    expect(r.text).not.toMatch(/(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])/);
    expect(r.text).not.toMatch(/-----BEGIN [A-Z ]*PRIVATE KEY-----/);
  });

  it("reads the database URL from CloudNativePG's app Secret and verifies the server against the cluster CA", async () => {
    const r = await load();
    const clusters = r.all<CnpgCluster>('Cluster');
    expect(clusters).toHaveLength(1);
    const cluster = clusters[0] as CnpgCluster;
    expect(cluster.apiVersion).toBe('postgresql.cnpg.io/v1');
    expect(cluster.spec.instances).toBe(expected.dbInstances);
    const name = cluster.metadata.name;
    for (const workload of [r.deployment, r.job]) {
      const pod = workload.spec.template.spec;
      const container = pod.containers[0] as Container;
      const { secretRefs, literal, value } = envSources(container, 'TASK_BROKER_DATABASE_URL');
      expect(secretRefs, workload.kind).toEqual([{ name: `${name}-app`, key: 'uri' }]);
      expect(value, 'the URL starts with the Secret value').toMatch(/^\$\([A-Za-z_][A-Za-z0-9_]*\)/);
      const options = new URLSearchParams(literal.replace(/^\?/, ''));
      expect(options.get('sslmode')).toBe('verify-full');
      const ca = options.get('sslrootcert') ?? '';
      const mount = container.volumeMounts?.find((m) => ca.startsWith(`${m.mountPath}/`));
      const volume = pod.volumes?.find((v) => v.name === mount?.name);
      expect(volume?.secret?.secretName, workload.kind).toBe(`${name}-ca`);
      // Only the certificate is projected, never the CA's private key.
      expect(volume?.secret?.items).toEqual([{ key: 'ca.crt', path: posix.relative(mount?.mountPath ?? '', ca) }]);
    }
    if (expected.overlay === 'production') {
      expect(cluster.spec.postgresql?.synchronous?.number ?? 0, 'commits wait for a standby').toBeGreaterThanOrEqual(1);
    }
  });

  it('gives the broker more time to terminate than its preStop pause plus its shutdown grace', async () => {
    const r = await load();
    const pod = r.deployment.spec.template.spec;
    const grace = shutdownGraceSeconds(r.broker);
    expect(grace).toBe(20);
    const preStop = r.broker.lifecycle?.preStop?.sleep?.seconds ?? 0;
    expect(pod.terminationGracePeriodSeconds ?? 30).toBeGreaterThan(grace + preStop);
  });

  it(`logs at ${expected.logLevel} level`, async () => {
    const r = await load();
    expect(envValue(r.broker, 'TASK_BROKER_LOG_LEVEL')).toBe(expected.logLevel);
  });

  it('runs one image everywhere, never a floating :latest', async () => {
    const r = await load();
    const images = [r.deployment, r.job].flatMap((w) => allContainers(w.spec.template.spec).map((c) => c.image));
    expect(new Set(images).size).toBe(1);
    const image = images[0] ?? '';
    expect(image).not.toMatch(/:latest(@|$)/);
    const lastSegment = image.split('/').pop() ?? '';
    expect(lastSegment.includes(':') || image.includes('@sha256:'), 'tagged or pinned').toBe(true);
    if (expected.overlay === 'production') expect(image).toMatch(/@sha256:[0-9a-f]{64}$/);
  });
});

describe('deploy/examples', () => {
  const load = async (file: string) => parseManifests(file, await readFile(join(ROOT, 'deploy/examples', file), 'utf8'));

  it('admin-shell.yaml runs an admin the policy names, with its SVID from the Workload API, under the restricted profile', async () => {
    const objects = await load('admin-shell.yaml');
    const pod = objects.find((o) => o.kind === 'Pod') as (K8sObject & { spec: PodSpec }) | undefined;
    expect(pod).toBeDefined();
    const spec = pod?.spec as PodSpec;
    const r = await rendered('production');
    const clients = r.one<ClusterSpiffeId>('ClusterSPIFFEID', 'task-broker-clients');
    const namespace = pod?.metadata.namespace ?? '';
    expect(spiffeIdApplies(clients, pod?.metadata.labels ?? {}, { 'kubernetes.io/metadata.name': namespace })).toBe(true);
    const id = renderSpiffeIdTemplate(clients.spec.spiffeIDTemplate, {
      trustDomain: TRUST_DOMAIN,
      namespace,
      serviceAccount: spec.serviceAccountName ?? 'default',
    });
    expect(parsePolicy(policyText(r), 'policy').adminDecision(SpiffeId.parse(id)).allowed).toBe(true);
    expect(spec.volumes?.find((v) => v.csi?.driver === CSI_DRIVER)?.csi?.readOnly).toBe(true);
    const admin = containerNamed(spec, 'admin');
    expect(envValue(admin, 'TASK_BROKER_ID')).toBe(`spiffe://${TRUST_DOMAIN}/ns/${NAMESPACE}/sa/task-broker`);
    expect(envValue(admin, 'TASK_BROKER_ADDRESS')).toBe(`task-broker.${NAMESPACE}.svc:8443`);
    for (const container of allContainers(spec)) {
      const sc = effectiveSecurity(spec, container);
      expect(sc.runAsNonRoot, container.name).toBe(true);
      expect(sc.allowPrivilegeEscalation, container.name).toBe(false);
      expect(sc.capabilities?.drop, container.name).toContain('ALL');
      expect(sc.seccompProfile?.type, container.name).toBe('RuntimeDefault');
    }
  });

  it('federation.yaml declares a federated trust domain for the same controller-manager class as the ClusterSPIFFEIDs', async () => {
    const objects = await load('federation.yaml');
    const ftd = objects.find((o) => o.kind === 'ClusterFederatedTrustDomain') as
      (K8sObject & { spec: { className?: string; trustDomain: string } }) | undefined;
    expect(ftd?.apiVersion).toBe('spire.spiffe.io/v1alpha1');
    const r = await rendered('production');
    expect(ftd?.spec.className).toBe(r.one<ClusterSpiffeId>('ClusterSPIFFEID', 'task-broker').spec.className);
    expect(ftd?.spec.trustDomain).not.toBe(TRUST_DOMAIN);
  });
});

// ---------------------------------------------------------------------------------------------

function policyText(r: Rendered): string {
  const path = envValue(r.broker, 'TASK_BROKER_POLICY') ?? '';
  const mount = r.broker.volumeMounts?.find((m) => m.mountPath === posix.dirname(path));
  const volume = r.deployment.spec.template.spec.volumes?.find((v) => v.name === mount?.name);
  const text = r.one<K8sObject>('ConfigMap', volume?.configMap?.name ?? '').data?.[posix.basename(path)];
  if (text === undefined) throw new Error('no policy in the policy ConfigMap');
  return text;
}

describe('Dockerfile', () => {
  const load = async () => (await loadDockerfile()).stages;

  it('builds in a Node.js 26 stage and runs on a separate Node.js 26 image', async () => {
    const stages = await load();
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) expect(stage.from).toMatch(/^(docker\.io\/(library\/)?)?node:26[.-]|^gcr\.io\/distroless\/nodejs26-/);
    const build = stages[0] as DockerStage;
    const runtime = stages.at(-1) as DockerStage;
    expect(runtime.from).not.toBe(build.from);
    const buildRuns = build.lines.filter((l) => /^RUN /i.test(l)).join('\n');
    expect(buildRuns).toMatch(/npm ci\b/);
    expect(buildRuns).toMatch(/npm run build\b/);
    expect(buildRuns).toMatch(/npm prune --omit=dev\b/);
  });

  it('pins every base image by digest, and says how to refresh the digests', async () => {
    const { text, stages } = await loadDockerfile();
    const named = new Set(stages.map((s) => s.name));
    for (const stage of stages) {
      if (named.has(stage.from)) continue; // FROM an earlier stage
      expect(stage.from, 'image:tag@sha256:<digest>').toMatch(/^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$/);
    }
    expect(text).toContain('docker buildx imagetools inspect');
  });

  it('labels the image with the OCI annotations, matching package.json and its base image', async () => {
    const stages = await load();
    const runtime = stages.at(-1) as DockerStage;
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; description: string; license: string };
    const label = labels(runtime);
    const oci = (key: string) => label.get(`org.opencontainers.image.${key}`);
    expect(oci('title')).toBe(pkg.name);
    expect(oci('description')).toBe(pkg.description);
    expect(oci('licenses')).toBe(pkg.license);
    const [baseName, baseDigest] = runtime.from.split('@');
    expect(oci('base.name')).toBe(baseName);
    expect(oci('base.digest')).toBe(baseDigest);
    // What differs per build comes from build arguments declared in the runtime stage.
    const declared = args(runtime);
    for (const [key, arg] of [
      ['version', 'VERSION'],
      ['revision', 'REVISION'],
      ['created', 'CREATED'],
      ['source', 'SOURCE'],
    ] as const) {
      expect(oci(key), key).toBe(`\${${arg}}`);
      expect(declared.has(arg), `ARG ${arg}`).toBe(true);
    }
    expect(declared.get('VERSION'), "VERSION's default is package.json's version").toBe(pkg.version);
  });

  it('leaves the embedded PostgreSQL out of the runtime image; the code imports it only without a database URL', async () => {
    const build = (await load())[0] as DockerStage;
    const dropped = deletedDependencies(build);
    expect(dropped.sort()).toEqual(['@electric-sql/pglite', 'kysely-pglite-dialect']);
    // Dropped from package.json before the prune, so npm prune removes them (and only their own dependencies).
    const run = instructions(build, 'RUN').find((r) => r.includes('npm pkg delete')) ?? '';
    expect(run.indexOf('npm pkg delete')).toBeLessThan(run.indexOf('npm prune --omit=dev'));
    // Nothing in src imports them statically: only src/store/database.ts, lazily, and it names them.
    const database = await readFile(join(ROOT, 'src/store/database.ts'), 'utf8');
    for (const name of dropped) {
      expect(database).toContain(`import('${name}')`);
      expect(database).toMatch(new RegExp(`PGLITE_PACKAGES = \\[[^\\]]*'${name.replace('/', '\\/')}'`));
    }
    const staticImports: string[] = [];
    for (const file of (await readdir(join(ROOT, 'src'), { recursive: true })).filter((f) => f.endsWith('.ts') && !f.startsWith('gen/'))) {
      const text = await readFile(join(ROOT, 'src', file), 'utf8');
      for (const m of text.matchAll(/^import\s+(?!type\b)[^;]*?from\s+'([^']+)'/gm))
        if (dropped.includes(m[1] ?? '')) staticImports.push(`src/${file}: ${m[0]}`);
    }
    expect(staticImports).toEqual([]);
  });

  it('writes the SBOM of the pruned runtime dependencies in the build and ships it in the image', async () => {
    const stages = await load();
    const build = stages[0] as DockerStage;
    const runtime = stages.at(-1) as DockerStage;
    const run = instructions(build, 'RUN').find((r) => r.includes('scripts/sbom.mjs')) ?? '';
    expect(run.indexOf('npm prune --omit=dev')).toBeGreaterThan(-1);
    expect(run.indexOf('node scripts/sbom.mjs')).toBeGreaterThan(run.indexOf('npm prune --omit=dev'));
    expect(instructions(build, 'COPY')).toContain('scripts/sbom.mjs scripts/sbom.mjs');
    expect(copiesFrom(runtime, build)).toContainEqual({ source: 'sbom.cdx.json', destination: './sbom.cdx.json' });
  });

  it('runs as the unprivileged user 65532, on a nonroot base, with root-owned files', async () => {
    const runtime = (await load()).at(-1) as DockerStage;
    const users = instructions(runtime, 'USER');
    expect(users.length).toBeGreaterThan(0);
    expect(users.at(-1)?.split(':')).toEqual([String(UID), String(UID)]);
    expect(runtime.from).toMatch(/:nonroot@/);
    for (const copy of instructions(runtime, 'COPY')) expect(copy, 'the broker cannot modify its own files').toContain('--chown=0:0');
  });

  it('copies what the CLI needs at run time: compiled code, launcher, protos, migrations, dependencies', async () => {
    const runtime = (await load()).at(-1) as DockerStage;
    const copies = runtime.lines.filter((l) => /^COPY /i.test(l));
    for (const needed of ['dist/', 'bin/', 'proto/', 'migrations/', 'node_modules/', 'package.json']) {
      expect(
        copies.some((l) => l.includes(`--from=`) && l.includes(needed)),
        needed,
      ).toBe(true);
    }
    const entrypoint = runtime.lines.find((l) => /^ENTRYPOINT /i.test(l)) ?? '';
    expect(entrypoint).toContain('bin/task-broker.js');
    expect(runtime.lines.find((l) => /^CMD /i.test(l))).toMatch(/"serve"/);
    const exposed = runtime.lines.filter((l) => /^EXPOSE /i.test(l)).join(' ');
    expect(exposed).toMatch(/\b8443\b/);
    expect(exposed).toMatch(/\b8080\b/);
  });

  it('keeps host dependencies, build output and git history out of the build context', async () => {
    const ignored = (await readFile(join(ROOT, '.dockerignore'), 'utf8')).split(/\r?\n/).map((l) => l.trim());
    for (const entry of ['node_modules/', 'dist/', '.git/', 'src/gen/']) {
      expect(
        ignored.some((l) => l === entry || l === `**/${entry}` || l === entry.replace(/\/$/, '')),
        entry,
      ).toBe(true);
    }
    for (const needed of ['src', 'proto', 'migrations', 'bin', 'scripts', 'package.json', 'package-lock.json']) {
      expect(
        ignored.some((l) => l === needed || l === `${needed}/`),
        `${needed} must stay in the context`,
      ).toBe(false);
    }
  });
});

describe('deploy/README.md', () => {
  it('names every admin command among those that need an admin SVID (§10)', async () => {
    const readme = await readFile(join(ROOT, 'deploy/README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## 10. Admin access'), readme.indexOf('\n## ', readme.indexOf('## 10. Admin access') + 1));
    const listed = /^Admin commands \(([^)]*)\) need an SVID/m.exec(section)?.[1] ?? '';
    const named = [...listed.matchAll(/`([^`]+)`/g)].map((m) => m[1]);
    expect(named.sort()).toEqual(
      Object.keys(adminCommands)
        .map((name) => name.replace(/^admin /, ''))
        .sort(),
    );
  });
});
