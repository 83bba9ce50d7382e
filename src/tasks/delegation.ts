/**
 * DelegateTask: the owner of an ACTIVE task hands a narrower part of it to another workload.
 *
 * The child's spec may only narrow the parent's: scopes a subset, resources within the parent's
 * (equal, or below a parent resource that ends with "/"), the parent's audience unless the rule's
 * delegation block allows another, and a ttl within the parent's remaining lifetime; the action
 * is the parent's. The rule that allows the root task must allow the hop (to whom, how deep,
 * which scopes). Everything decidable here is decided before the round trip; the statement
 * (tb_op_delegate, migrations/0005) locks the parent (root first), checks it is ACTIVE and
 * outlives the child, and writes the child with both events, or records the refusal on the
 * parent's chain. The child's hash covers its spec, the principal it inherits and the parent's
 * hash.
 */
import { quoted } from '../errors.js';
import type { Actor, JsonObject, Task, TaskSpec } from '../model/task.js';
import { SpiffeId, SpiffeIdError } from '../spiffe/id.js';
import type { TaskAuthority } from './authority.js';
import { newTaskId } from './ids.js';
import type { LifecycleLimits } from './limits.js';
import { canonicalSpecJson, specEventDetails, taskHashOf } from './spec.js';
import { TaskAccess, type Denial } from './task-access.js';
import { taskRowFromJson, toTask } from './task-rows.js';
import { idempotencyKeyArgument, invalid, validateDelegatedFields } from './validation.js';

/** What DelegateTask may narrow; absent fields are the parent's (ttl: its remaining lifetime). */
export interface DelegatedSpecInput {
  resources: string[];
  scopes: string[];
  audience: string;
  params: JsonObject;
  ttlSeconds?: number;
}

export interface DelegationRequest {
  parentTaskId: string;
  delegatee: string;
  spec: DelegatedSpecInput;
  idempotencyKey?: string;
  subjectToken?: string;
}

/** The delegators a token names are bounded so a deep chain of long IDs cannot outgrow a token. */
export const MAX_DELEGATOR_BYTES = 8 * 1024;

/** Whether `resource` is within one of `parents`: equal, or below a parent resource that ends with "/". */
export function resourceWithin(resource: string, parents: readonly string[]): boolean {
  return parents.some((p) => p === resource || (p.endsWith('/') && resource.startsWith(p) && resource.length > p.length));
}

export async function delegateTask(
  deps: { access: TaskAccess; authority: TaskAuthority; limits: LifecycleLimits },
  actor: Actor,
  request: DelegationRequest,
): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
  const { access, authority, limits } = deps;
  const operation = 'DelegateTask';
  const delegatee = delegateeArgument(request.delegatee);
  const key = idempotencyKeyArgument(request.idempotencyKey);
  validateDelegatedFields(request.spec, limits);
  const parent = await access.servedFacts(actor, request.parentTaskId, operation);
  const now = access.now();
  const remaining = Math.floor((parent.expiresAt.getTime() - now.getTime()) / 1000);

  // The given fields were checked above; the others are the parent's, checked when it was made.
  const input = request.spec;
  const spec: TaskSpec = {
    action: parent.action,
    resources: input.resources.length > 0 ? [...input.resources] : parent.resources,
    audience: input.audience || parent.audience,
    scopes: input.scopes.length > 0 ? [...input.scopes] : parent.scopes,
    params: input.params,
    ttlSeconds: input.ttlSeconds ?? Math.max(remaining, 1),
  };

  const parentDecision = await authority.decideTask(parent, { scopes: parent.scopes });
  if (parentDecision.allowed) await authority.checkSession(actor, parent, parentDecision, request.subjectToken, operation);

  const refuse = (message: string, details: Record<string, unknown> = {}): Denial => ({
    kind: 'permission-denied',
    message,
    details: { operation, reason: message, delegatee: delegatee.toString(), ...details },
  });
  let deny: Denial | undefined;
  const extraScopes = spec.scopes.filter((s) => !parent.scopes.includes(s));
  const extraResources = spec.resources.filter((r) => !resourceWithin(r, parent.resources));
  const delegators = [actor.spiffeId, ...parent.delegators];
  if (extraScopes.length > 0)
    deny = refuse(`widening refused: scopes not granted to the parent task: ${extraScopes.join(' ')}`, { widening: 'scope', requested_scopes: spec.scopes });
  else if (extraResources.length > 0)
    deny = refuse(`widening refused: resources not within the parent task's: ${extraResources.map((r) => quoted(r)).join(' ')}`, { widening: 'resource' });
  else if (remaining < 1)
    deny = { kind: 'failed-precondition', message: 'the parent task expires in less than a second: nothing can be delegated', details: { operation } };
  else if (spec.ttlSeconds > remaining)
    deny = refuse(`widening refused: ttl ${spec.ttlSeconds}s is beyond the parent task's remaining lifetime (${remaining}s)`, {
      widening: 'ttl',
      requested_ttl_seconds: spec.ttlSeconds,
    });
  else if (Buffer.byteLength(delegators.join(''), 'utf8') > MAX_DELEGATOR_BYTES)
    deny = refuse(`the chain of delegators would be longer than ${MAX_DELEGATOR_BYTES} bytes`, { widening: 'depth' });
  const decision = parentDecision.allowed
    ? authority.decideDelegation(parent, parentDecision, { delegatee, scopes: spec.scopes, audience: spec.audience })
    : parentDecision;
  if (!deny && !decision.allowed) {
    deny = TaskAccess.policyDenial(operation, decision, {
      delegatee: delegatee.toString(),
      depth: parent.depth + 1,
      scopes: spec.scopes,
      audience: spec.audience,
    });
  }

  const principal = parent.principal;
  const canonicalSpec = canonicalSpecJson(spec, { principal, parentTaskHash: parent.taskHash });
  const hash = taskHashOf(canonicalSpec);
  const childId = newTaskId();
  const expiresAt = new Date(now.getTime() + spec.ttlSeconds * 1000);
  const rootTaskId = parent.rootTaskId ?? parent.taskId;
  const op: Record<string, unknown> = {
    op: 'delegate',
    task_id: parent.taskId,
    ...access.who(actor, now),
    idem: key === undefined ? null : `delegated:${parent.taskId}:${key}`,
  };
  if (deny) {
    op.deny = deny;
  } else {
    op.child = {
      task_id: childId,
      owner_spiffe_id: delegatee.toString(),
      owner_trust_domain: delegatee.trustDomain,
      spec: { action: spec.action, resources: spec.resources, audience: spec.audience, scopes: spec.scopes, params: spec.params },
      task_hash: hash,
      audience: spec.audience,
      scopes: spec.scopes,
      resources: spec.resources,
      ttl_seconds: spec.ttlSeconds,
      expires_at: expiresAt.toISOString(),
    };
    const policyFacts = decision.allowed ? { policy_rule: decision.rule, policy_digest: decision.policyDigest } : {};
    const { task_hash: childHash, action: _action, ...specFacts } = specEventDetails(spec, hash, expiresAt);
    op.details = {
      delegatee: delegatee.toString(),
      child_task_hash: childHash,
      depth: parent.depth + 1,
      ...specFacts,
      ...policyFacts,
      ...(key !== undefined ? { idempotency_key: key } : {}),
    };
    op.child_details = {
      ...specEventDetails(spec, hash, expiresAt),
      state: 'ACTIVE',
      parent_task_id: parent.taskId,
      parent_task_hash: parent.taskHash,
      root_task_id: rootTaskId,
      depth: parent.depth + 1,
      delegated_by: actor.spiffeId,
      delegators,
      ...policyFacts,
    };
  }
  const result = await access.applyOn(parent, op);
  if (result.refused || !result.task) return access.refused(actor, parent.taskId, operation, result);
  const row = taskRowFromJson(result.task);
  if (!result.replayed) access.remember(row.task_id, { ...row, resources: spec.resources });
  return { task: toTask(row), canonicalSpec, replayed: result.replayed === true };
}

function delegateeArgument(value: string): SpiffeId {
  if (!value) throw invalid('delegatee is required: the SPIFFE ID of the workload that will own the delegated task');
  try {
    return SpiffeId.parse(value);
  } catch (err) {
    if (err instanceof SpiffeIdError) throw invalid(`delegatee: ${err.message}`);
    throw err;
  }
}
