/**
 * The API server's schema check, offline: every object is validated against the schema of its
 * apiVersion and kind, with the semantics of Kubernetes structural schemas. An unknown field is
 * an error (the server prunes or rejects it: a misspelled field silently does nothing), unless
 * the schema keeps unknown fields (x-kubernetes-preserve-unknown-fields). An object whose kind
 * has no schema here is an error too, so nothing is rendered unchecked.
 *
 * Schemas are vendored in ./schemas (README.md there: sources, pinned versions, licences):
 * Kubernetes' own API, and the CustomResourceDefinitions of the operators the manifests use.
 * Not checked (the API server does, these files cannot): CEL rules (x-kubernetes-validations)
 * and Kubernetes' hand-written validation beyond what names and labels below repeat.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import type { ErrorObject, SchemaObject, ValidateFunction } from 'ajv';

const SCHEMA_DIR = fileURLToPath(new URL('./schemas/', import.meta.url));
const KUBERNETES_ID = 'kubernetes';
const OBJECT_META = `${KUBERNETES_ID}#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`;
const QUANTITY_ID = 'io.k8s.apimachinery.pkg.api.resource.Quantity';

/** resource.Quantity: a string in Kubernetes' suffix notation, or a plain number. */
const QUANTITY = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:\d+(?:\.\d*)?|\.\d+))?$/;
/** RFC 1123 subdomain: most object names. */
const DNS_SUBDOMAIN = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

type Scope = 'Namespaced' | 'Cluster';
type Schema = Record<string, unknown>;

interface KubernetesFile {
  source: string;
  scopes: Record<string, Scope>;
  definitions: Record<string, Schema>;
}
interface CrdFile {
  source: string;
  group: string;
  kind: string;
  scope: Scope;
  versions: Record<string, Schema>;
}

interface KindEntry {
  scope: Scope;
  source: string;
  /** The schema to compile (a $ref into the Kubernetes definitions, or a CRD's own). */
  schema: SchemaObject;
  validate?: ValidateFunction;
}

/** The formats the vendored schemas use. A schema with another one fails to load: teach it here first. */
const FORMATS = {
  int32: { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 },
  int64: { type: 'number', validate: (n: number) => Number.isInteger(n) },
  double: { type: 'number', validate: () => true },
  float: { type: 'number', validate: () => true },
  byte: { type: 'string', validate: (s: string) => /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(s) },
  'date-time': { type: 'string', validate: (s: string) => /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/.test(s) },
} as const;

export class ApiSchemas {
  readonly #ajv: Ajv;
  readonly #kinds: Map<string, KindEntry>;

  private constructor(ajv: Ajv, kinds: Map<string, KindEntry>) {
    this.#ajv = ajv;
    this.#kinds = kinds;
  }

  /** Loads every vendored schema in `dir` (test/deploy/schemas by default). */
  static async load(dir = SCHEMA_DIR): Promise<ApiSchemas> {
    const ajv = new Ajv({ allErrors: true, strict: false, verbose: true, formats: FORMATS, code: { regExp: goRegExp } });
    ajv.addKeyword({
      keyword: 'x-list-map-keys',
      type: 'array',
      schemaType: 'array',
      error: { message: ({ schema }) => `duplicate entries with the same ${(schema as string[]).join('+')}` },
      validate: (keys: string[], data: unknown[]) => {
        const seen = new Set(data.map((item) => JSON.stringify(keys.map((k) => (item as Record<string, unknown> | null)?.[k]))));
        return seen.size === data.length;
      },
    });
    const kinds = new Map<string, KindEntry>();
    const files = (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
    const kubernetesFiles = files.filter((f) => f.startsWith('kubernetes-'));
    if (kubernetesFiles.length !== 1) throw new Error(`${dir}: expected one kubernetes-<version>.json, found ${kubernetesFiles.length}`);
    for (const file of files) {
      const content = JSON.parse(await readFile(join(dir, file), 'utf8')) as KubernetesFile | CrdFile;
      if ('definitions' in content) addKubernetes(ajv, kinds, content, file);
      else addCrd(kinds, content, file);
    }
    return new ApiSchemas(ajv, kinds);
  }

  /** "apps/v1 Deployment", … for every kind there is a schema for. */
  get kinds(): string[] {
    return [...this.#kinds.keys()].sort();
  }

  has(apiVersion: string, kind: string): boolean {
    return this.#kinds.has(`${apiVersion} ${kind}`);
  }

  scopeOf(apiVersion: string, kind: string): Scope | undefined {
    return this.#kinds.get(`${apiVersion} ${kind}`)?.scope;
  }

  /** What the API server would refuse or silently drop in `object`; empty when it is valid. */
  problems(object: unknown): string[] {
    if (object === null || typeof object !== 'object' || Array.isArray(object)) return ['not an object'];
    const { apiVersion, kind, metadata } = object as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown; labels?: unknown } };
    if (typeof apiVersion !== 'string' || typeof kind !== 'string') return ['apiVersion and kind must be strings'];
    const entry = this.#kinds.get(`${apiVersion} ${kind}`);
    if (!entry) {
      return [`no schema for ${apiVersion} ${kind}: vendor its schema (test/deploy/schemas/README.md) before rendering it, or fix apiVersion/kind`];
    }
    entry.validate ??= this.#ajv.compile(entry.schema);
    const problems = entry.validate(withoutNulls(object)) ? [] : describe(entry.validate.errors ?? []);
    const name = metadata?.name;
    if (typeof name !== 'string' || name.length > 253 || !DNS_SUBDOMAIN.test(name)) {
      problems.push(`/metadata/name: ${JSON.stringify(name)} is not a valid object name (RFC 1123 subdomain)`);
    }
    for (const [key, value] of Object.entries((metadata?.labels ?? {}) as Record<string, unknown>)) {
      const [prefix, labelName] = key.includes('/') ? [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)] : [undefined, key];
      const keyOk = LABEL_NAME.test(labelName) && labelName.length <= 63 && (prefix === undefined || (DNS_SUBDOMAIN.test(prefix) && prefix.length <= 253));
      if (!keyOk) problems.push(`/metadata/labels: ${JSON.stringify(key)} is not a valid label key`);
      if (typeof value !== 'string' || value.length > 63 || (value !== '' && !LABEL_NAME.test(value))) {
        problems.push(`/metadata/labels/${key}: ${JSON.stringify(value)} is not a valid label value`);
      }
    }
    return problems;
  }
}

function addKubernetes(ajv: Ajv, kinds: Map<string, KindEntry>, file: KubernetesFile, name: string): void {
  const definitions: Record<string, unknown> = {};
  for (const [id, schema] of Object.entries(file.definitions)) {
    definitions[id] = id === QUANTITY_ID ? quantitySchema() : structural(schema, { crd: false, where: `${name}: ${id}` });
  }
  ajv.addSchema({ $id: KUBERNETES_ID, definitions });
  for (const [id, schema] of Object.entries(file.definitions)) {
    const gvks = (schema['x-kubernetes-group-version-kind'] ?? []) as { group: string; version: string; kind: string }[];
    for (const gvk of gvks) {
      const apiVersion = gvk.group ? `${gvk.group}/${gvk.version}` : gvk.version;
      const scope = file.scopes[`${apiVersion}/${gvk.kind}`];
      // Kinds without a create endpoint (List types, options, events of the watch API) are never applied.
      if (!scope) continue;
      kinds.set(`${apiVersion} ${gvk.kind}`, { scope, source: file.source, schema: { $ref: `${KUBERNETES_ID}#/definitions/${id}` } });
    }
  }
}

function addCrd(kinds: Map<string, KindEntry>, file: CrdFile, name: string): void {
  for (const [version, schema] of Object.entries(file.versions)) {
    const converted = structural(schema, { crd: true, where: `${name}: ${version}` });
    // The API server validates metadata as ObjectMeta, whatever the CRD says about it.
    const properties = (converted.properties ?? {}) as Record<string, unknown>;
    converted.properties = { ...properties, metadata: { $ref: OBJECT_META } };
    kinds.set(`${file.group}/${version} ${file.kind}`, { scope: file.scope, source: file.source, schema: converted });
  }
}

/**
 * An OpenAPI schema from Kubernetes or a CRD as a JSON Schema with the API server's semantics:
 * objects with declared properties are closed, int-or-string takes both, nullable takes null,
 * list-type map keys are unique. CRD objects are closed even without properties (structural
 * schemas prune every undeclared field); built-in ones without properties are opaque (RawExtension).
 */
function structural(schema: Schema, how: { crd: boolean; where: string }): Schema {
  const out: Schema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key.startsWith('x-kubernetes-') || key === 'nullable') continue;
    if (key === '$ref' && typeof value === 'string') out.$ref = value.replace(/^#\/definitions\//, `${KUBERNETES_ID}#/definitions/`);
    else if ((key === 'properties' || key === 'patternProperties') && isSchema(value)) {
      out[key] = Object.fromEntries(Object.entries(value).map(([name, sub]) => [name, structural(sub as Schema, how)]));
    } else if ((key === 'allOf' || key === 'anyOf' || key === 'oneOf') && Array.isArray(value)) {
      out[key] = value.map((sub) => structural(sub as Schema, how));
    } else if ((key === 'items' || key === 'additionalProperties' || key === 'not') && isSchema(value)) out[key] = structural(value, how);
    else if (key === 'format') {
      if (value === 'int-or-string') continue;
      if (typeof value !== 'string' || !Object.hasOwn(FORMATS, value))
        throw new Error(`${how.where}: format ${String(value)} is unknown to the validator (test/deploy/api-schemas.ts FORMATS)`);
      out[key] = value;
    } else out[key] = value;
  }
  if (schema['x-kubernetes-int-or-string'] === true || schema.format === 'int-or-string') {
    delete out.type;
    out.anyOf ??= [{ type: 'integer' }, { type: 'string' }];
  }
  if (schema.nullable === true && typeof out.type === 'string') out.type = [out.type, 'null'];
  const isObject = out.type === 'object' || out.properties !== undefined;
  const keepsUnknown = schema['x-kubernetes-preserve-unknown-fields'] === true || schema['x-kubernetes-embedded-resource'] === true;
  if (isObject && !keepsUnknown && out.additionalProperties === undefined && (out.properties !== undefined || how.crd)) {
    out.additionalProperties = false;
  }
  const listType = schema['x-kubernetes-list-type'];
  const mapKeys = schema['x-kubernetes-list-map-keys'];
  if (listType === 'map' && Array.isArray(mapKeys)) out['x-list-map-keys'] = mapKeys;
  if (listType === 'set') out.uniqueItems = true;
  return out;
}

/**
 * The API server evaluates `pattern` with Go's regexp (RE2). Its syntax is JavaScript's but for
 * a few extensions; the one the vendored schemas use is a leading inline flag group, "(?i)".
 * Anything else JavaScript cannot compile fails loudly when the schema is compiled.
 */
function goRegExp(pattern: string, flags: string): RegExp {
  const inline = /^(\^?)\(\?([imsU]+)\)/.exec(pattern);
  if (!inline) return new RegExp(pattern, flags);
  const [whole, anchor = '', goFlags = ''] = inline;
  if (goFlags.includes('U')) throw new Error(`pattern ${pattern}: Go's ungreedy flag has no JavaScript equivalent`);
  return new RegExp(anchor + pattern.slice(whole.length), flags + goFlags);
}
goRegExp.code = 'goRegExp';

/**
 * The object as the API server validates it: a field set to null is as good as absent (built-in
 * types decode it to their zero value; CRD schemas prune it unless nullable, where null is valid
 * anyway), so `creationTimestamp: null` passes and a required field set to null is missing.
 */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([, v]) => v !== null)
      .map(([k, v]) => [k, withoutNulls(v)]),
  );
}

function quantitySchema(): Schema {
  return { anyOf: [{ type: 'string', pattern: QUANTITY.source }, { type: 'number' }] };
}

function isSchema(value: unknown): value is Schema {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** ajv's errors as the API server would word them, one line each, without anyOf's echoes. */
function describe(errors: ErrorObject[]): string[] {
  const lines = new Set<string>();
  for (const error of errors) {
    const where = error.instancePath || '/';
    if (error.schemaPath.includes(`/${QUANTITY_ID}/`)) {
      lines.add(`${where}: ${JSON.stringify(error.data)} is not a quantity (like 250m, 1, 512Mi)`);
    } else if (error.keyword === 'additionalProperties') {
      lines.add(`${where}: unknown field "${String((error.params as { additionalProperty: string }).additionalProperty)}"`);
    } else if (error.keyword === 'anyOf') {
      continue; // its branches have reported already
    } else {
      lines.add(`${where}: ${error.message ?? error.keyword}`);
    }
  }
  return [...lines];
}
