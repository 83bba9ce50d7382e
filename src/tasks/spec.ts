/**
 * The task spec, its validation and its canonical hash.
 *
 * task_hash = base64url(SHA-256(RFC 8785 canonical JSON of
 *   {"action", "audience", "params", "resources", "scopes", "ttl_seconds"}))
 * with the values exactly as the creator gave them: anyone holding the spec can recompute it.
 */
import canonicalize from 'canonicalize';
import { createHash } from 'node:crypto';
import { BrokerError } from '../errors.js';
import { SpiffeId, SpiffeIdError } from '../spiffe/id.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface TaskSpec {
  action: string;
  resources: string[];
  audience: string;
  scopes: string[];
  params: JsonObject;
  ttlSeconds: number;
}

export interface SpecLimits {
  defaultTaskTtlSeconds: number;
  maxTaskTtlSeconds: number;
}

export const MAX_RESOURCES = 64;
export const MAX_RESOURCE_LENGTH = 512;
export const MAX_SCOPES = 32;
export const MAX_PARAMS_BYTES = 16 * 1024;

const ACTION = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;
// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

const invalid = (message: string) => new BrokerError('invalid-argument', message);

function noDuplicates(field: string, values: string[]): void {
  const seen = new Set<string>();
  for (const v of values) {
    if (seen.has(v)) throw invalid(`${field}: "${v}" is listed twice`);
    seen.add(v);
  }
}

export function validateScopes(field: string, scopes: string[]): void {
  if (scopes.length > MAX_SCOPES) throw invalid(`${field}: at most ${MAX_SCOPES} scopes`);
  for (const s of scopes) {
    if (!SCOPE_TOKEN.test(s)) throw invalid(`${field}: "${s.slice(0, 64)}" is not a valid scope token (RFC 6749: printable ASCII without space, '"' or '\\', at most 128 characters)`);
  }
  noDuplicates(field, scopes);
}

export interface TaskSpecInput {
  action: string;
  resources: string[];
  audience: string;
  scopes: string[];
  params: JsonObject;
  /** Absent: the default task ttl. */
  ttlSeconds?: number;
}

/** Validates a spec; every problem is an INVALID_ARGUMENT that names the field. */
export function validateTaskSpec(input: TaskSpecInput, limits: SpecLimits): TaskSpec {
  if (!input.action) throw invalid('spec.action is required');
  if (!ACTION.test(input.action)) throw invalid('spec.action: 1 to 128 characters, letters, digits and . _ : / - (starting with a letter or digit)');

  if (input.resources.length > MAX_RESOURCES) throw invalid(`spec.resources: at most ${MAX_RESOURCES}`);
  for (const r of input.resources) {
    if (r.length === 0 || r.length > MAX_RESOURCE_LENGTH) throw invalid(`spec.resources: each resource is 1 to ${MAX_RESOURCE_LENGTH} characters`);
    if (CONTROL.test(r)) throw invalid('spec.resources: control characters are not allowed');
  }
  noDuplicates('spec.resources', input.resources);

  if (!input.audience) throw invalid('spec.audience is required: the SPIFFE ID of the service the tokens are for');
  try {
    SpiffeId.parse(input.audience);
  } catch (err) {
    if (err instanceof SpiffeIdError) throw invalid(`spec.audience: ${err.message}`);
    throw err;
  }

  if (input.scopes.length === 0) throw invalid('spec.scopes: at least one scope is required');
  validateScopes('spec.scopes', input.scopes);

  const paramsBytes = Buffer.byteLength(canonicalize(input.params) ?? '', 'utf8');
  if (paramsBytes > MAX_PARAMS_BYTES) throw invalid(`spec.params: at most ${MAX_PARAMS_BYTES} bytes of canonical JSON (got ${paramsBytes})`);

  const ttlSeconds = input.ttlSeconds ?? limits.defaultTaskTtlSeconds;
  if (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0) throw invalid('spec.ttl must be a positive whole number of seconds');
  if (ttlSeconds > limits.maxTaskTtlSeconds) throw invalid(`spec.ttl: at most ${limits.maxTaskTtlSeconds}s (requested ${ttlSeconds}s)`);

  return { action: input.action, resources: [...input.resources], audience: input.audience, scopes: [...input.scopes], params: input.params, ttlSeconds };
}

/** The document the hash covers, exactly as the contract names its fields. */
export function hashedSpecDocument(spec: TaskSpec): Record<string, JsonValue> {
  return { action: spec.action, audience: spec.audience, params: spec.params, resources: spec.resources, scopes: spec.scopes, ttl_seconds: spec.ttlSeconds };
}

export function canonicalSpecJson(spec: TaskSpec): string {
  const text = canonicalize(hashedSpecDocument(spec));
  if (text === undefined) throw invalid('spec cannot be canonicalized');
  return text;
}

export function taskHashOf(canonicalJson: string): string {
  return createHash('sha256').update(canonicalJson, 'utf8').digest('base64url');
}

export function taskHash(spec: TaskSpec): string {
  return taskHashOf(canonicalSpecJson(spec));
}
