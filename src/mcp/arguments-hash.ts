/**
 * The fingerprint of a tool call's arguments that goes into the broker task's spec: the base64url
 * SHA-256 of their RFC 8785 canonical JSON. The task hash (and so every token of the task) then
 * commits to exactly what the requester asked for, without the broker storing the arguments
 * themselves (they may be large or sensitive); anyone holding the arguments can recompute it.
 */
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';

export function argumentsSha256(args: unknown): string {
  const text = canonicalize(args ?? {});
  if (text === undefined) throw new TypeError('tool arguments cannot be canonicalized (RFC 8785)');
  return createHash('sha256').update(text, 'utf8').digest('base64url');
}
