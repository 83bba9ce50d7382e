/**
 * Writes the vendored API schemas in this folder from upstream files (README.md here says which
 * release each comes from and how to fetch it). Descriptions, defaults and patch hints are left
 * out: they do not decide what the API server accepts, and without them the files stay small.
 *
 *   npx tsx test/deploy/schemas/vendor.ts kubernetes <swagger.json> "<where it came from>"
 *   npx tsx test/deploy/schemas/vendor.ts crd <crd.yaml> "<where it came from>"
 *
 * The output is formatted by Prettier, so re-running on the same input changes nothing.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { format } from 'prettier';
import { parseAllDocuments } from 'yaml';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const LEFT_OUT = new Set(['description', 'default', 'example', 'x-kubernetes-patch-merge-key', 'x-kubernetes-patch-strategy']);

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A schema without its notes. Walks the schema's structure, so a field named "description" stays. */
function strip(schema: Json): Json {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) return schema;
  const out: Record<string, Json> = {};
  for (const [key, value] of Object.entries(schema)) {
    if (LEFT_OUT.has(key)) continue;
    if (NAMED_SCHEMAS.has(key) && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      out[key] = Object.fromEntries(Object.entries(value).map(([name, sub]) => [name, strip(sub)]));
    } else if (SCHEMA_LISTS.has(key) && Array.isArray(value)) {
      out[key] = value.map(strip);
    } else if (SUBSCHEMAS.has(key)) {
      out[key] = strip(value);
    } else {
      out[key] = value;
    }
  }
  return out;
}

const NAMED_SCHEMAS = new Set(['properties', 'patternProperties', 'definitions']);
const SCHEMA_LISTS = new Set(['allOf', 'anyOf', 'oneOf']);
const SUBSCHEMAS = new Set(['items', 'additionalProperties', 'not']);

async function write(name: string, value: unknown): Promise<void> {
  const text = await format(JSON.stringify(value), { parser: 'json', printWidth: 160 });
  await writeFile(join(HERE, name), text);
  console.log(`wrote test/deploy/schemas/${name} (${text.length} bytes)`);
}

interface Swagger {
  info: { title: string; version: string };
  paths: Record<string, Record<string, { 'x-kubernetes-action'?: string; 'x-kubernetes-group-version-kind'?: Gvk }>>;
  definitions: Record<string, Json>;
}
interface Gvk {
  group: string;
  version: string;
  kind: string;
}

/** Kubernetes' own API: every definition, and whether each kind lives in a namespace (from its create path). */
async function vendorKubernetes(file: string, source: string, out: string): Promise<void> {
  const swagger = JSON.parse(await readFile(file, 'utf8')) as Swagger;
  const scopes: Record<string, 'Namespaced' | 'Cluster'> = {};
  for (const [path, operations] of Object.entries(swagger.paths)) {
    for (const operation of Object.values(operations)) {
      const gvk = operation['x-kubernetes-group-version-kind'];
      if (operation['x-kubernetes-action'] !== 'post' || !gvk) continue;
      const apiVersion = gvk.group ? `${gvk.group}/${gvk.version}` : gvk.version;
      scopes[`${apiVersion}/${gvk.kind}`] = path.includes('{namespace}') ? 'Namespaced' : 'Cluster';
    }
  }
  const definitions = strip({ definitions: swagger.definitions }) as { definitions: Json };
  await write(out, { source, license: 'Apache-2.0', scopes: sortKeys(scopes), definitions: definitions.definitions });
}

interface Crd {
  kind: string;
  spec: {
    group: string;
    names: { kind: string; plural: string };
    scope: 'Namespaced' | 'Cluster';
    versions: { name: string; served: boolean; schema?: { openAPIV3Schema: Json } }[];
  };
}

/** One CustomResourceDefinition: the openAPIV3Schema of each served version. */
async function vendorCrd(file: string, source: string): Promise<void> {
  const docs = parseAllDocuments(await readFile(file, 'utf8')).map((d) => d.toJS() as Crd | null);
  const crds = docs.filter((d): d is Crd => d?.kind === 'CustomResourceDefinition');
  if (crds.length !== 1) throw new Error(`${file}: expected one CustomResourceDefinition, found ${crds.length}`);
  const crd = crds[0] as Crd;
  const versions = Object.fromEntries(
    crd.spec.versions
      .filter((v) => v.served)
      .map((v) => {
        if (!v.schema) throw new Error(`${file}: version ${v.name} has no schema`);
        return [v.name, strip(v.schema.openAPIV3Schema)];
      }),
  );
  await write(`${crd.spec.names.plural}.${crd.spec.group}.json`, {
    source,
    license: 'Apache-2.0',
    group: crd.spec.group,
    kind: crd.spec.names.kind,
    scope: crd.spec.scope,
    versions,
  });
}

function sortKeys<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => a.localeCompare(b)));
}

const [what, file, source, out] = process.argv.slice(2);
if (!file || !source || (what !== 'kubernetes' && what !== 'crd')) {
  console.error('usage: vendor.ts kubernetes <swagger.json> "<source>" [out.json] | vendor.ts crd <crd.yaml> "<source>"');
  process.exit(2);
}
if (what === 'kubernetes') await vendorKubernetes(file, source, out ?? 'kubernetes.json');
else await vendorCrd(file, source);
