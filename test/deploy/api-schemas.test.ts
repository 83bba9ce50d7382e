/**
 * Every object deploy/ renders, checked against the Kubernetes API schema of its kind (the
 * built-in API of Kubernetes 1.30 and the CRDs of CloudNativePG, spire-controller-manager and
 * the Prometheus Operator, vendored in ./schemas): both overlays, deploy/base with each
 * component on its own, and the examples. A misspelled field fails here instead of being
 * silently dropped by the API server, and a kind without a schema fails too.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ApiSchemas } from './api-schemas.js';
import type { K8sObject } from './render.js';
import { kustomize, kustomizeBaseWith, parseManifests, ROOT } from './render.js';

const EXPECTED_PROBLEMS = 'test.task-broker.dev/expected-problems';
const FIXTURES = join(ROOT, 'test/deploy/fixtures/invalid');
const FIXTURE_FILES = (await readdir(FIXTURES)).filter((f) => f.endsWith('.yaml')).sort();
const COMPONENTS = (await readdir(join(ROOT, 'deploy/components'))).sort();
const EXAMPLES = (await readdir(join(ROOT, 'deploy/examples'))).filter((f) => f.endsWith('.yaml')).sort();

let schemas: ApiSchemas;
beforeAll(async () => {
  schemas = await ApiSchemas.load();
});

/** Problems per object ("Kind/name": [...]), only for objects that have some. */
function problemsOf(objects: readonly K8sObject[]): Record<string, string[]> {
  const found: Record<string, string[]> = {};
  for (const object of objects) {
    const problems = schemas.problems(object);
    const scope = schemas.scopeOf(object.apiVersion, object.kind);
    // Namespaces are written into each manifest (deploy/README.md, design notes): a namespaced
    // object without one would land in whatever namespace kubectl's context points at.
    if (scope === 'Namespaced' && !object.metadata.namespace) problems.push('/metadata: a namespaced object without a namespace');
    if (scope === 'Cluster' && object.metadata.namespace !== undefined) problems.push('/metadata/namespace: set on a cluster-scoped object');
    if (problems.length > 0) found[`${object.kind}/${object.metadata.name}`] = problems;
  }
  return found;
}

describe('the vendored API schemas', () => {
  it('cover the built-in kinds and the CRDs the manifests use, each from a named upstream release', async () => {
    for (const kind of [
      'v1 Namespace',
      'v1 ServiceAccount',
      'v1 ConfigMap',
      'v1 Service',
      'v1 Pod',
      'apps/v1 Deployment',
      'batch/v1 Job',
      'policy/v1 PodDisruptionBudget',
      'autoscaling/v2 HorizontalPodAutoscaler',
      'networking.k8s.io/v1 NetworkPolicy',
      'postgresql.cnpg.io/v1 Cluster',
      'spire.spiffe.io/v1alpha1 ClusterSPIFFEID',
      'spire.spiffe.io/v1alpha1 ClusterFederatedTrustDomain',
      'monitoring.coreos.com/v1 ServiceMonitor',
      'monitoring.coreos.com/v1 PrometheusRule',
    ]) {
      expect(schemas.kinds, kind).toContain(kind);
    }
    const readme = await readFile(join(ROOT, 'test/deploy/schemas/README.md'), 'utf8');
    for (const file of (await readdir(join(ROOT, 'test/deploy/schemas'))).filter((f) => f.endsWith('.json'))) {
      const { source, license } = JSON.parse(await readFile(join(ROOT, 'test/deploy/schemas', file), 'utf8')) as { source?: string; license?: string };
      expect(source, file).toMatch(/ v\d+\.\d+\.\d+: .*sha256 [0-9a-f]{64}$/);
      expect(license, file).toBe('Apache-2.0');
      expect(readme, `README.md names ${file}`).toContain(file);
    }
  });

  it.each(FIXTURE_FILES)('refuse fixtures/invalid/%s with exactly the problems it announces', async (file) => {
    const objects = parseManifests(file, await readFile(join(FIXTURES, file), 'utf8'));
    expect(objects.length).toBeGreaterThan(0);
    for (const object of objects) {
      const expected = object.metadata.annotations?.[EXPECTED_PROBLEMS]?.split('\n');
      expect(expected, `${file}: ${object.kind}/${object.metadata.name} announces its problems`).toBeDefined();
      expect(schemas.problems(object)).toEqual(expected);
    }
  });

  it('accept the misspelled fixtures once corrected, so each refusal is about that field alone', async () => {
    const corrections: Record<string, [string, string]> = {
      'deployment-misspelled-field.yaml': ['imagePullPolcy:', 'imagePullPolicy:'],
      'cnpg-cluster-misspelled-field.yaml': ['synchronus:', 'synchronous:'],
      'clusterspiffeid-misspelled-field.yaml': ['spiffeIdTemplate:', 'spiffeIDTemplate:'],
      'servicemonitor-misspelled-field.yaml': ['metricsPath:', 'path:'],
    };
    for (const [file, [wrong, right]] of Object.entries(corrections)) {
      const text = await readFile(join(FIXTURES, file), 'utf8');
      const field = new RegExp(`^(\\s+)${wrong}`, 'm');
      expect(text, file).toMatch(field);
      const objects = parseManifests(file, text.replace(field, `$1${right}`));
      expect(
        objects.map((o) => schemas.problems(o)),
        file,
      ).toEqual(objects.map(() => []));
    }
  });

  it('take a field set to null as absent, as the API server does', () => {
    const service = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'nulls', namespace: 'task-broker', creationTimestamp: null },
      spec: { selector: { app: 'nulls' }, ports: [{ name: 'http', port: 8080, targetPort: null }] },
      status: { loadBalancer: {} },
    };
    expect(schemas.problems(service)).toEqual([]);
    expect(schemas.problems({ ...service, spec: { ports: [{ name: 'http', port: null }] } })).toEqual(["/spec/ports/0: must have required property 'port'"]);
  });

  it('check types, quantities and list keys as well as field names', () => {
    const deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'typed', namespace: 'task-broker', labels: { 'app.kubernetes.io/name': 'not a label value' } },
      spec: {
        replicas: 'three',
        selector: { matchLabels: { app: 'typed' } },
        template: {
          metadata: { labels: { app: 'typed' } },
          spec: {
            containers: [
              {
                name: 'app',
                image: 'registry.example.com/app:1',
                ports: [
                  { containerPort: 8080, protocol: 'TCP' },
                  { containerPort: 8080, protocol: 'TCP' },
                ],
                resources: { limits: { memory: '512MB', cpu: 1 } },
              },
            ],
          },
        },
      },
    };
    expect(schemas.problems(deployment)).toEqual([
      '/spec/replicas: must be integer',
      '/spec/template/spec/containers/0/ports: duplicate entries with the same containerPort+protocol',
      '/spec/template/spec/containers/0/resources/limits/memory: "512MB" is not a quantity (like 250m, 1, 512Mi)',
      '/metadata/labels/app.kubernetes.io/name: "not a label value" is not a valid label value',
    ]);
  });
});

describe.each(['dev', 'production'])('deploy/overlays/%s', (overlay) => {
  it('renders only objects that are valid against their API schema', async () => {
    const objects = parseManifests(overlay, await kustomize(`deploy/overlays/${overlay}`));
    expect(objects.length).toBeGreaterThan(10);
    expect(problemsOf(objects)).toEqual({});
  });
});

describe.each(COMPONENTS)('deploy/components/%s on deploy/base', (component) => {
  it('renders only objects that are valid against their API schema', async () => {
    const objects = parseManifests(component, await kustomizeBaseWith(component));
    expect(objects.length).toBeGreaterThan(10);
    expect(problemsOf(objects)).toEqual({});
  });
});

describe.each(EXAMPLES)('deploy/examples/%s', (file) => {
  it('holds only objects that are valid against their API schema', async () => {
    const objects = parseManifests(file, await readFile(join(ROOT, 'deploy/examples', file), 'utf8'));
    expect(objects.length).toBeGreaterThan(0);
    expect(problemsOf(objects)).toEqual({});
  });
});
