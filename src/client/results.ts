/**
 * The workload SDK's plain-JavaScript view of the broker's messages: Date timestamps, task states
 * without the TASK_STATE_ prefix, params as a JSON object, ttls in seconds. Requests go the other
 * way (taskSpecOf).
 */
import type { Task__Output } from '../gen/taskbroker/v1/Task.js';
import type { TaskSpec } from '../gen/taskbroker/v1/TaskSpec.js';
import type { DelegatedSpec } from '../gen/taskbroker/v1/DelegatedSpec.js';
import type { TaskSpec__Output } from '../gen/taskbroker/v1/TaskSpec.js';
import type { WhoAmIResponse__Output } from '../gen/taskbroker/v1/WhoAmIResponse.js';
import type { IssueTokenResponse__Output } from '../gen/taskbroker/v1/IssueTokenResponse.js';
import type { JsonObject, Principal, Requester, Task, TaskResult, TaskSpec as TaskSpecInfo } from '../model/task.js';
import type { Requester as RequesterMessage } from '../gen/taskbroker/v1/Requester.js';
import type { TaskResult__Output } from '../gen/taskbroker/v1/TaskResult.js';
import type { Principal__Output } from '../gen/taskbroker/v1/Principal.js';
import { parseTaskState } from '../protocol/enums.js';
import { jsonToStruct, secondsToDuration, structToJson } from '../protocol/struct.js';
import { fromTimestamp } from '../protocol/timestamps.js';

export type { JsonObject, JsonValue, Principal, Requester, Task, TaskReadOperation, TaskResult, TaskSpec as TaskSpecInfo, TaskState } from '../model/task.js';

/** What a task is: the fields of its hash. */
export interface TaskSpecInput {
  /** What the task does, e.g. "invoice.export". */
  action: string;
  resources?: string[];
  /** The SPIFFE ID of the service its tokens are for. */
  audience: string;
  /** RFC 6749 scope tokens, e.g. ["invoices:read"]. */
  scopes: string[];
  params?: JsonObject;
  /** The task's lifetime; default: the broker's. */
  ttlSeconds?: number;
}

export interface CreateTaskInput extends TaskSpecInput {
  /** A retry with the same key returns the same task (`replayed: true`). */
  idempotencyKey?: string;
}

export interface CreatedTask {
  task: Task;
  /** RFC 8785 canonical JSON of the spec: its SHA-256 (base64url) is task.taskHash. */
  canonicalSpec: string;
  /** True when an earlier call with the same idempotency key created the task. */
  replayed: boolean;
}

/**
 * What a delegated task narrows; every field absent is the parent's (resources, scopes, audience,
 * its remaining lifetime). The action is always the parent's.
 */
export interface DelegatedSpecInput {
  /** Each one of the parent's resources, or below one of them that ends with "/". */
  resources?: string[];
  /** A subset of the parent's scopes (and of what the rule lets be handed on). */
  scopes?: string[];
  /** The parent's audience, or one the rule's delegation.audiences allows. */
  audience?: string;
  params?: JsonObject;
  /** At most the parent's remaining lifetime. */
  ttlSeconds?: number;
}

export interface DelegateTaskInput {
  /** The caller's ACTIVE task. */
  parentTaskId: string;
  /** The SPIFFE ID of the workload that will own the child task. */
  delegatee: string;
  spec?: DelegatedSpecInput;
  /** A retry with the same key by the same caller returns the same child (`replayed: true`). */
  idempotencyKey?: string;
  /** Required when the parent's rule binds follow-ups to its session (bind_session). */
  subjectToken?: string;
}

/** The child task (owned by the delegatee); its canonicalSpec includes parent_task_hash. */
export type DelegatedTask = CreatedTask;

export interface IssuedToken {
  /** The compact JWS to present to the audience. */
  token: string;
  tokenId: string;
  expiresAt: Date;
  scopes: string[];
}

export interface EndedTask {
  task: Task;
  /** Tokens revoked with the task. */
  revokedTokens: number;
}

/** Who the broker sees calling. */
export interface Identity {
  spiffeId: string;
  trustDomain: string;
  /** RFC 8705 x5t#S256 of the certificate presented: what tokens are bound to. */
  certThumbprint: string;
  /** When the verified chain stops verifying. */
  validUntil: Date | undefined;
}

export function taskSpecOf(input: TaskSpecInput): TaskSpec {
  return {
    action: input.action,
    resources: input.resources ?? [],
    audience: input.audience,
    scopes: input.scopes,
    params: jsonToStruct(input.params ?? {}),
    ttl: input.ttlSeconds === undefined ? null : secondsToDuration(input.ttlSeconds),
  };
}

export function delegatedSpecOf(input: DelegatedSpecInput = {}): DelegatedSpec {
  return {
    resources: input.resources ?? [],
    scopes: input.scopes ?? [],
    audience: input.audience ?? '',
    params: input.params === undefined ? null : jsonToStruct(input.params),
    ttl: input.ttlSeconds === undefined ? null : secondsToDuration(input.ttlSeconds),
  };
}

function specInfo(spec: TaskSpec__Output | null): TaskSpecInfo {
  return {
    action: spec?.action ?? '',
    resources: spec?.resources ?? [],
    audience: spec?.audience ?? '',
    scopes: spec?.scopes ?? [],
    params: structToJson(spec?.params),
    ttlSeconds: Number(spec?.ttl?.seconds ?? 0),
  };
}

/** A required timestamp of a response; the broker always sets it. */
function at(ts: Parameters<typeof fromTimestamp>[0], field: string): Date {
  const date = fromTimestamp(ts, field);
  if (!date) throw new Error(`the broker's answer has no ${field}`);
  return date;
}

export function taskOf(task: Task__Output | null): Task {
  if (!task) throw new Error("the broker's answer has no task");
  const state = parseTaskState(task.state);
  if (!state) throw new Error(`the broker sent an unknown task state ${task.state}`);
  return {
    taskId: task.taskId,
    ownerSpiffeId: task.ownerSpiffeId,
    spec: specInfo(task.spec),
    taskHash: task.taskHash,
    state,
    createdAt: at(task.createdAt, 'task.created_at'),
    expiresAt: at(task.expiresAt, 'task.expires_at'),
    endedAt: fromTimestamp(task.endedAt, 'task.ended_at') ?? null,
    endedBy: task.endedBy || null,
    endReason: task.endReason || null,
    approvedBy: task.approvedBy || null,
    approvedAt: fromTimestamp(task.approvedAt, 'task.approved_at') ?? null,
    approvalComment: task.approvalComment || null,
    policyRule: task.policyRule || null,
    parentTaskId: task.parentTaskId || null,
    rootTaskId: task.rootTaskId || null,
    depth: task.depth,
    delegators: task.delegators,
    principal: principalOf(task.principal),
    approver: principalOf(task.approver),
    gateway: task.gateway || null,
    hasResult: task.hasResult,
    resultFailed: task.resultFailed,
  };
}

/** The wire form of a Requester (exactly one credential). */
export function requesterMessage(requester: Requester | undefined): RequesterMessage | null {
  if (!requester) return null;
  if (requester.x509SvidChain !== undefined) return { x509SvidChain: requester.x509SvidChain.map((der) => Buffer.from(der)), subjectToken: '' };
  return { x509SvidChain: [], subjectToken: requester.subjectToken };
}

export function taskResultOf(result: TaskResult__Output | null): TaskResult | null {
  if (!result) return null;
  return {
    json: result.json,
    failed: result.failed,
    storedAt: at(result.storedAt, 'result.stored_at'),
    retainedUntil: at(result.retainedUntil, 'result.retained_until'),
  };
}

function principalOf(p: Principal__Output | null): Principal | null {
  return p ? { iss: p.issuer, sub: p.subject, ...(p.sessionId ? { sid: p.sessionId } : {}) } : null;
}

export function issuedTokenOf(res: IssueTokenResponse__Output): IssuedToken {
  return { token: res.token, tokenId: res.tokenId, expiresAt: at(res.expiresAt, 'expires_at'), scopes: res.scopes };
}

export function identityOf(res: WhoAmIResponse__Output): Identity {
  return { spiffeId: res.spiffeId, trustDomain: res.trustDomain, certThumbprint: res.certThumbprint, validUntil: fromTimestamp(res.validUntil, 'valid_until') };
}
