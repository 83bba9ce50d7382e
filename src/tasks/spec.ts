/**
 * The task spec's canonical hash (its validation is in validation.ts).
 *
 * task_hash = base64url(SHA-256(RFC 8785 canonical JSON of
 *   {"action", "audience", "params", "resources", "scopes", "ttl_seconds"}))
 * with the values exactly as the creator gave them: anyone holding the spec can recompute it.
 */
import canonicalize from 'canonicalize';
import { createHash } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { JsonValue, TaskSpec } from '../model/task.js';

/** The document the hash covers, exactly as the contract names its fields. */
export function hashedSpecDocument(spec: TaskSpec): Record<string, JsonValue> {
  return { action: spec.action, audience: spec.audience, params: spec.params, resources: spec.resources, scopes: spec.scopes, ttl_seconds: spec.ttlSeconds };
}

export function canonicalSpecJson(spec: TaskSpec): string {
  const text = canonicalize(hashedSpecDocument(spec));
  if (text === undefined) throw new BrokerError('invalid-argument', 'spec cannot be canonicalized');
  return text;
}

export function taskHashOf(canonicalJson: string): string {
  return createHash('sha256').update(canonicalJson, 'utf8').digest('base64url');
}

export function taskHash(spec: TaskSpec): string {
  return taskHashOf(canonicalSpecJson(spec));
}
