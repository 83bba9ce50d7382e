/**
 * The task domain's vocabulary: who acts, what a task is, the states it moves through and the
 * answers a verification can give. Everything above the store speaks these types; the store's
 * schema uses the same state names, so a row and a Task never disagree on them.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export type TaskState = 'PENDING_APPROVAL' | 'ACTIVE' | 'COMPLETED' | 'CANCELLED' | 'REVOKED' | 'EXPIRED';
export const TASK_STATES: readonly TaskState[] = ['PENDING_APPROVAL', 'ACTIVE', 'COMPLETED', 'CANCELLED', 'REVOKED', 'EXPIRED'];
/** A task in these states can still change; the others are final. */
export const LIVE_STATES: readonly TaskState[] = ['PENDING_APPROVAL', 'ACTIVE'];
export type FinalState = Exclude<TaskState, 'PENDING_APPROVAL' | 'ACTIVE'>;

export function isLive(state: TaskState): boolean {
  return LIVE_STATES.includes(state);
}

/**
 * The W3C trace context a call's own work hangs under: the broker's server span when tracing is
 * on, else the caller's span from a valid `traceparent`. Its trace id is recorded in every audit
 * event the call writes (details.trace_id).
 */
export interface CallTrace {
  /** 32 lowercase hex digits, not all zero. */
  readonly traceId: string;
  /** 16 lowercase hex digits, not all zero. */
  readonly spanId: string;
  /** The sampled bit of the trace flags. */
  readonly sampled: boolean;
  /** The caller's `tracestate`, as received (only used with tracing on). */
  readonly state?: string;
}

/** The verified caller of a request. */
export interface Actor {
  spiffeId: string;
  trustDomain: string;
  certThumbprint: string;
  requestId: string;
  /** The call's trace context, when it has one (a valid traceparent, or tracing on). */
  trace?: CallTrace;
}

export interface TaskSpec {
  action: string;
  resources: string[];
  audience: string;
  scopes: string[];
  params: JsonObject;
  ttlSeconds: number;
}

/**
 * A task's action (TaskSpec.action) and a reported operation (TokenUse.operation): 1 to 128
 * letters, digits and . _ : / -, starting with a letter or digit. One pattern, so a verifier never
 * accepts what the broker then refuses.
 */
export const ACTION_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/** The subject behind a task: the issuer of its verified subject token, its sub and its sid. */
export interface Principal {
  iss: string;
  sub: string;
  sid?: string;
}

export interface Task {
  taskId: string;
  ownerSpiffeId: string;
  spec: TaskSpec;
  taskHash: string;
  state: TaskState;
  createdAt: Date;
  expiresAt: Date;
  endedAt: Date | null;
  endedBy: string | null;
  endReason: string | null;
  approvedBy: string | null;
  approvedAt: Date | null;
  approvalComment: string | null;
  policyRule: string | null;
  /** Delegation: null and 0 for a root task. */
  parentTaskId: string | null;
  rootTaskId: string | null;
  depth: number;
  /** Most recent first. */
  delegators: string[];
  principal: Principal | null;
  approver: Principal | null;
  /** The workload that created the task for its requester and serves it (CreateTask on_behalf_of); null otherwise. */
  gateway: string | null;
  /** Whether a result was stored with the task, and whether the work failed. */
  hasResult: boolean;
  resultFailed: boolean;
}

/**
 * Who asked a gateway (e.g. an MCP server) for what it now asks of the broker: the X509-SVID chain
 * (DER, leaf first) the requester presented on its mTLS connection to the gateway, or a subject
 * token it authenticated with. Exactly one.
 */
export type Requester = { x509SvidChain: Uint8Array[]; subjectToken?: undefined } | { subjectToken: string; x509SvidChain?: undefined };

/** A task's stored result (CompleteTask), as GetTask with operation RESULT hands it out. */
export interface TaskResult {
  /** A JSON document. */
  json: string;
  failed: boolean;
  storedAt: Date;
  retainedUntil: Date;
}

/** What a read of a task is for, so the trail tells them apart. */
export type TaskReadOperation = 'poll' | 'result';

export const VERIFY_REASONS = [
  'valid',
  'malformed',
  'bad-signature',
  'expired',
  'revoked',
  'task-not-active',
  'audience-mismatch',
  'binding-mismatch',
  'task-hash-mismatch',
  'presenter-required',
  'uses-exhausted',
] as const;
export type VerifyReason = (typeof VERIFY_REASONS)[number];
