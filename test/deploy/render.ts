/**
 * Renders deploy/ the way `kubectl apply -k` would (kubectl's built-in kustomize) and parses the
 * result, for the deploy tests. kubectl is required: without it the tests fail with a message
 * saying so, never skip.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const KUBECTL = process.env.KUBECTL ?? 'kubectl';

export type Labels = Record<string, string>;
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Labels; annotations?: Labels };
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}

const run = promisify(execFile);

/** `kubectl kustomize <dir>`, dir relative to the repository root. */
export async function kustomize(dir: string): Promise<string> {
  try {
    const { stdout } = await run(KUBECTL, ['kustomize', join(ROOT, dir)], { maxBuffer: 32 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new Error(
        `kubectl not found (looked for "${KUBECTL}" on PATH). The deploy tests render deploy/overlays with ` +
          '`kubectl kustomize` and cannot check anything without it: install kubectl 1.27 or later ' +
          '(built-in kustomize v5), or point KUBECTL at it.',
      );
    }
    throw new Error(`kubectl kustomize ${dir} failed: ${e.stderr?.trim() || e.message}`);
  }
}

/**
 * deploy/base with one component (deploy/components/<name>) and nothing else: a component cannot
 * be rendered alone, so a throw-away kustomization outside the repository combines the two.
 * kustomize refuses absolute paths there; relative ones may climb out of its root.
 */
export async function kustomizeBaseWith(component: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'task-broker-kustomize-'));
  try {
    const base = relative(dir, join(ROOT, 'deploy/base'));
    const comp = relative(dir, join(ROOT, 'deploy/components', component));
    await writeFile(
      join(dir, 'kustomization.yaml'),
      `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ${base}\ncomponents:\n  - ${comp}\n`,
    );
    return await kustomize(relative(ROOT, dir));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every document of a multi-document YAML text; each must be a Kubernetes object. */
export function parseManifests(what: string, text: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    const problem = doc.errors[0] ?? doc.warnings[0];
    if (problem) throw new Error(`${what}: YAML does not parse: ${problem.message}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    const obj = value as Partial<K8sObject>;
    if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string' || typeof obj.metadata?.name !== 'string') {
      throw new Error(`${what}: a document is not a Kubernetes object: ${JSON.stringify(value).slice(0, 200)}`);
    }
    objects.push(obj as K8sObject);
  }
  return objects;
}
