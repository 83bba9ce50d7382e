/**
 * Input validation for the task domain, in one place: every check the domain makes of what a
 * caller sent, each an INVALID_ARGUMENT that names the field. Handlers decode and encode only;
 * the domain calls these before it touches anything. Two character rules exist on purpose:
 * identifiers (actions, resources, idempotency keys) admit no control character at all; free
 * text (outcomes, reasons, comments) admits tab, line feed and carriage return.
 */
import canonicalize from 'canonicalize';
import { BrokerError, quoted } from '../errors.js';
import { ACTION_NAME, type TaskSpec, type TaskState } from '../model/task.js';
import type { JsonObject } from '../model/task.js';
import { parseTaskState } from '../protocol/enums.js';
import { certificateThumbprint } from '../spiffe/certificate.js';
import { SpiffeId, SpiffeIdError } from '../spiffe/id.js';
import { parseSpiffeIdPattern, patternToPostgresRegex, SpiffeIdPatternError, type SpiffeIdMatcher } from '../spiffe/pattern.js';
import { MAX_TOKEN_LENGTH } from '../tokens/task-token.js';
import { MAX_SUBJECT_TOKEN_CHARS } from '../policy/subject-tokens.js';
import { isWellFormedTaskId } from './ids.js';
import { MAX_IDEMPOTENCY_KEY, MAX_PARAMS_BYTES, MAX_RESOURCE_LENGTH, MAX_RESOURCES, MAX_SCOPES, MAX_TEXT, type SpecLimits } from './limits.js';

// eslint-disable-next-line no-control-regex
const IDENTIFIER_CONTROL = /[\x00-\x1f\x7f]/;
// eslint-disable-next-line no-control-regex
const TEXT_CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;
// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/;

export const invalid = (message: string) => new BrokerError('invalid-argument', message);

/** Free text: at most MAX_TEXT characters, no control characters but tab, LF and CR. */
export function freeText(value: string, field: string): string {
  if (value.length > MAX_TEXT) throw invalid(`${field}: at most ${MAX_TEXT} characters`);
  if (TEXT_CONTROL.test(value)) throw invalid(`${field}: control characters are not allowed`);
  return value;
}

export function taskIdArgument(taskId: string): string {
  if (!isWellFormedTaskId(taskId)) throw invalid('task_id is not a task ID');
  return taskId;
}

/** An idempotency key as sent: empty means none. */
export function idempotencyKeyArgument(key: string | undefined): string | undefined {
  if (key === undefined || key === '') return undefined;
  if (key.length > MAX_IDEMPOTENCY_KEY || IDENTIFIER_CONTROL.test(key)) throw invalid(`idempotency_key: 1 to ${MAX_IDEMPOTENCY_KEY} printable characters`);
  return key;
}

/** A subject token as sent: empty means none; longer than the verifier reads (MAX_SUBJECT_TOKEN_CHARS) is refused before anything else. */
export function subjectTokenArgument(token: string | undefined): string | undefined {
  if (token === undefined || token === '') return undefined;
  if (token.length > MAX_SUBJECT_TOKEN_CHARS) throw invalid(`subject_token: at most ${MAX_SUBJECT_TOKEN_CHARS} characters`);
  return token;
}

/** A token presented for verification; longer than any token the broker issues is refused outright. */
export function tokenArgument(token: string): string {
  if (token.length > MAX_TOKEN_LENGTH) throw invalid(`token: at most ${MAX_TOKEN_LENGTH} characters`);
  return token;
}

/** The presenter's certificate as the resource server sent it (thumbprint, or DER): the thumbprint the binding is checked against. */
export function presenterArgument(presenter: { presenterThumbprint?: string; presenterCertDer?: Uint8Array }): string | undefined {
  const der = presenter.presenterCertDer;
  if (der === undefined) return presenter.presenterThumbprint;
  if (der.length === 0) throw invalid('presenter_cert_der is empty');
  return certificateThumbprint(der);
}

/** A requested token ttl; absent means the default. */
export function tokenTtlArgument(ttlSeconds: number | undefined): number | undefined {
  if (ttlSeconds !== undefined && (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0)) throw invalid('ttl must be a positive whole number of seconds');
  return ttlSeconds;
}

/** A page size: 0 or absent means `fallback`; otherwise 1 to `max`. */
export function pageSizeArgument(value: number | undefined, fallback: number, max: number): number {
  const size = value === undefined || value === 0 ? fallback : value;
  if (!Number.isInteger(size) || size < 1 || size > max) throw invalid(`page_size: 1 to ${max}`);
  return size;
}

/** A task state filter (ACTIVE or TASK_STATE_ACTIVE); empty or TASK_STATE_UNSPECIFIED: any state. */
export function stateFilterArgument(value: string | undefined): TaskState | undefined {
  if (value === undefined) return undefined;
  const state = parseTaskState(value);
  if (state === null) throw invalid(`state: unknown task state ${quoted(value)}`);
  return state;
}

/** An exact SPIFFE ID or a pattern selecting workloads, with the regex PostgreSQL filters by (the matcher decides). */
export function selectorArgument(field: string, selector: string): { matcher: SpiffeIdMatcher; regex: string } {
  try {
    return { matcher: parseSpiffeIdPattern(selector), regex: patternToPostgresRegex(selector) };
  } catch (err) {
    if (err instanceof SpiffeIdPatternError) throw invalid(`${field}: ${err.message}`);
    throw err;
  }
}

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
    if (!SCOPE_TOKEN.test(s))
      throw invalid(`${field}: "${s.slice(0, 64)}" is not a valid scope token (RFC 6749: printable ASCII without space, '"' or '\\', at most 128 characters)`);
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
  if (!ACTION_NAME.test(input.action)) throw invalid('spec.action: 1 to 128 characters, letters, digits and . _ : / - (starting with a letter or digit)');
  resourcesArgument(input.resources);
  if (!input.audience) throw invalid('spec.audience is required: the SPIFFE ID of the service the tokens are for');
  audienceArgument(input.audience);
  if (input.scopes.length === 0) throw invalid('spec.scopes: at least one scope is required');
  validateScopes('spec.scopes', input.scopes);
  paramsArgument(input.params);
  const ttlSeconds = taskTtlArgument(input.ttlSeconds ?? limits.defaultTaskTtlSeconds, limits);
  return { action: input.action, resources: [...input.resources], audience: input.audience, scopes: [...input.scopes], params: input.params, ttlSeconds };
}

/**
 * The fields a DelegateTask request gave, each checked on its own before anything is looked up
 * (absent ones are the parent's, checked with the whole spec later).
 */
export function validateDelegatedFields(
  input: { resources: string[]; scopes: string[]; audience: string; params: JsonObject; ttlSeconds?: number },
  limits: SpecLimits,
): void {
  resourcesArgument(input.resources);
  if (input.audience) audienceArgument(input.audience);
  if (input.scopes.length > 0) validateScopes('spec.scopes', input.scopes);
  paramsArgument(input.params);
  if (input.ttlSeconds !== undefined) taskTtlArgument(input.ttlSeconds, limits);
}

function resourcesArgument(resources: string[]): void {
  if (resources.length > MAX_RESOURCES) throw invalid(`spec.resources: at most ${MAX_RESOURCES}`);
  for (const r of resources) {
    if (r.length === 0 || r.length > MAX_RESOURCE_LENGTH) throw invalid(`spec.resources: each resource is 1 to ${MAX_RESOURCE_LENGTH} characters`);
    if (IDENTIFIER_CONTROL.test(r)) throw invalid('spec.resources: control characters are not allowed');
  }
  noDuplicates('spec.resources', resources);
}

function audienceArgument(audience: string): void {
  try {
    SpiffeId.parse(audience);
  } catch (err) {
    if (err instanceof SpiffeIdError) throw invalid(`spec.audience: ${err.message}`);
    throw err;
  }
}

function paramsArgument(params: JsonObject): void {
  const paramsBytes = Buffer.byteLength(canonicalize(params) ?? '', 'utf8');
  if (paramsBytes > MAX_PARAMS_BYTES) throw invalid(`spec.params: at most ${MAX_PARAMS_BYTES} bytes of canonical JSON (got ${paramsBytes})`);
}

function taskTtlArgument(ttlSeconds: number, limits: SpecLimits): number {
  if (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0) throw invalid('spec.ttl must be a positive whole number of seconds');
  if (ttlSeconds > limits.maxTaskTtlSeconds) throw invalid(`spec.ttl: at most ${limits.maxTaskTtlSeconds}s (requested ${ttlSeconds}s)`);
  return ttlSeconds;
}
