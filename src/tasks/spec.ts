/**
 * The task spec's canonical hash (its validation is in validation.ts).
 *
 * task_hash = base64url(SHA-256(RFC 8785 canonical JSON of
 *   {"action", "audience", "params", "resources", "scopes", "ttl_seconds"}))
 * with the values exactly as the creator gave them: anyone holding the spec can recompute it.
 * A task bound to a principal adds "principal" ({"iss", "sub"}, and "sid" when there is one); a
 * delegated task adds "parent_task_hash", so the hashes chain from any task up to its root.
 */
import canonicalize from 'canonicalize';
import { createHash } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { JsonValue, Principal, TaskSpec } from '../model/task.js';

/** What a task's hash covers beyond its spec. */
export interface HashBindings {
  principal?: Principal | null;
  parentTaskHash?: string | null;
}

/** The document the hash covers, exactly as the contract names its fields. */
export function hashedSpecDocument(spec: TaskSpec, bindings: HashBindings = {}): Record<string, JsonValue> {
  const doc: Record<string, JsonValue> = {
    action: spec.action,
    audience: spec.audience,
    params: spec.params,
    resources: spec.resources,
    scopes: spec.scopes,
    ttl_seconds: spec.ttlSeconds,
  };
  const { principal, parentTaskHash } = bindings;
  if (principal)
    doc.principal = principal.sid === undefined ? { iss: principal.iss, sub: principal.sub } : { iss: principal.iss, sub: principal.sub, sid: principal.sid };
  if (parentTaskHash) doc.parent_task_hash = parentTaskHash;
  return doc;
}

export function canonicalSpecJson(spec: TaskSpec, bindings: HashBindings = {}): string {
  const text = canonicalize(hashedSpecDocument(spec, bindings));
  if (text === undefined) throw new BrokerError('invalid-argument', 'spec cannot be canonicalized');
  return text;
}

export function taskHashOf(canonicalJson: string): string {
  return createHash('sha256').update(canonicalJson, 'utf8').digest('base64url');
}

export function taskHash(spec: TaskSpec): string {
  return taskHashOf(canonicalSpecJson(spec));
}

/** What a task.created (and task.delegated) event records of a spec and its hash. */
export function specEventDetails(spec: TaskSpec, hash: string, expiresAt: Date): Record<string, JsonValue> {
  return {
    task_hash: hash,
    action: spec.action,
    audience: spec.audience,
    resources: spec.resources,
    scopes: spec.scopes,
    ttl_seconds: spec.ttlSeconds,
    expires_at: expiresAt.toISOString(),
  };
}
