/**
 * The task lifecycle: create, poll, issue tokens, complete, cancel, verify, expire.
 *
 * Every change runs in one transaction that locks the task row first, checks owner and state,
 * applies the change, revokes tokens when the task leaves ACTIVE, and appends its audit events.
 * Refusals that must be on record (a stranger's poll, a token refused) commit their audit event
 * and then fail: if the event cannot be stored, the request fails too (fail closed).
 *
 * The six RPCs of workloads and resource servers (create, get, issue, verify, complete, cancel)
 * reach the database once each: the broker decides what it can from the task's immutable facts
 * (owner, spec, hash, expiry: cached once read) and the policy, signs the token, and hands one
 * operation to the write batcher, whose statement (tb_apply, migrations/0003) locks, checks the
 * state, writes and appends the audit event, for many concurrent calls in one commit. The admin
 * plane and the sweeper use transactions of their own (endTask and audit below), writing the
 * same rows and events through the same database functions.
 */

import { CompiledQuery, sql } from 'kysely';
import { DenialThrottle } from '../audit/denial-throttle.js';
import { appendAuditEvent, type AuditActor, type AuditEventInput } from '../audit/audit.js';
import { BrokerError } from '../errors.js';
import type { PolicyDecision } from '../policy/policy.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import type { Db, Store, Tx } from '../store/database.js';
import { WriteBatcher, type WriteBatcherLimits } from '../store/write-batcher.js';
import { runTransaction } from '../store/transaction.js';
import { storableJson } from '../store/write-batcher.js';
import { LIVE_STATES, type TaskState } from '../model/task.js';
import type { TaskRow } from '../store/schema.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import { checkTaskToken, signTaskToken, type TaskTokenClaims } from '../tokens/task-token.js';
import { isWellFormedTaskId, newTaskId, newTokenId } from './ids.js';
import { canonicalSpecJson, taskHashOf, validateScopes, validateTaskSpec, type SpecLimits, type TaskSpec, type TaskSpecInput } from './spec.js';

/** The verified caller of a request, as the lifecycle needs it. */
export interface Actor {
  spiffeId: string;
  trustDomain: string;
  certThumbprint: string;
  requestId: string;
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
}

export interface LifecycleLimits extends SpecLimits {
  defaultTokenTtlSeconds: number;
  maxTokenTtlSeconds: number;
}

export const DEFAULT_LIMITS: LifecycleLimits = {
  defaultTaskTtlSeconds: 15 * 60,
  maxTaskTtlSeconds: 24 * 60 * 60,
  defaultTokenTtlSeconds: 5 * 60,
  maxTokenTtlSeconds: 15 * 60,
};

export type VerifyReason =
  | 'valid'
  | 'malformed'
  | 'bad-signature'
  | 'expired'
  | 'revoked'
  | 'task-not-active'
  | 'audience-mismatch'
  | 'binding-mismatch'
  | 'task-hash-mismatch'
  | 'presenter-required';

export interface VerifyResult {
  valid: boolean;
  reason: VerifyReason;
  detail: string;
  claims?: TaskTokenClaims;
  bindingChecked: boolean;
}

export interface IssuedToken {
  token: string;
  tokenId: string;
  expiresAt: Date;
  scopes: string[];
}

export interface LifecycleDeps {
  db: Db;
  keys: SigningKeyRing;
  /** The token issuer (`iss`) and the actor recorded for the broker's own actions (expiry). */
  issuer: string;
  /** Consulted on every request; no policy (current() undefined) denies everything. */
  policy: PolicySource;
  limits?: Partial<LifecycleLimits>;
  clock?: () => Date;
  /** Told about outcomes, for metrics; absent: nothing is told. */
  observer?: LifecycleObserver;
  /** How many of a stranger's denied probes per task are written (default: DenialThrottle's). */
  denials?: DenialThrottle;
  /** Runs a unit of work in a transaction (Store.transaction, which also feeds write health); default: runTransaction on `db`. */
  transact?: <T>(work: (tx: Tx) => Promise<T>) => Promise<T>;
  /**
   * The write path's statement and reads, as prepared statements (Store.applyBatch, Store.read),
   * and the write health its outcomes feed; default: the same statements through `db`.
   */
  store?: Pick<Store, 'applyBatch' | 'read' | 'writes'>;
  /** Bounds of the write batcher (group commit). */
  batcher?: Partial<WriteBatcherLimits>;
}

/** What never changes about a task once created: enough to decide policy and sign a token before the one round trip. */
export interface TaskFacts {
  ownerSpiffeId: string;
  action: string;
  audience: string;
  scopes: string[];
  ttlSeconds: number;
  taskHash: string;
  expiresAt: Date;
}

/** Task facts kept per replica; the oldest are forgotten first (a miss costs one read). */
const MAX_CACHED_FACTS = 20_000;

/** A refusal decided by the broker before the round trip, recorded by the database after it locked the task. */
interface Denial {
  kind: 'permission-denied' | 'failed-precondition';
  message: string;
  details: Record<string, unknown>;
}

/** The result of one operation of tb_apply (migrations/0003). */
interface OpResult {
  refused?: 'not-found' | 'already-exists' | 'permission-denied' | 'failed-precondition';
  message?: string;
  exists?: boolean;
  task?: Record<string, unknown>;
  replayed?: boolean;
  revoked?: number;
  ended?: Array<{ state: FinalState; revoked: number }>;
  reason?: VerifyReason;
  detail?: string;
}

/** The columns TaskFacts come from (FACTS_SQL reads them; a created row has them). */
type FactsRow = Pick<TaskRow, 'owner_spiffe_id' | 'action' | 'audience' | 'scopes' | 'ttl_seconds' | 'task_hash' | 'expires_at'>;

const FACTS_SQL = 'select owner_spiffe_id, action, audience, scopes, ttl_seconds, task_hash, expires_at from tasks where task_id = $1';

/** A task row as tb_apply returns it (to_jsonb: timestamps as text). */
function taskRowFromJson(j: Record<string, unknown>): TaskRow {
  const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
  return {
    ...(j as unknown as TaskRow),
    created_at: new Date(j.created_at as string),
    expires_at: new Date(j.expires_at as string),
    ended_at: date(j.ended_at),
    approved_at: date(j.approved_at),
  };
}

export type FinalState = Exclude<TaskState, 'PENDING_APPROVAL' | 'ACTIVE'>;

/** Hooks for metrics. They must not throw; they never change an outcome. */
export interface LifecycleObserver {
  /** A task reached a final state, with the tokens revoked with it; called once its transaction committed. */
  taskEnded?(state: FinalState, revokedTokens: number): void;
  /** One audit event was appended, taking `seconds`. */
  auditWritten?(seconds: number): void;
  /** A write batch of `operations` calls committed, `seconds` after it was sent. */
  batchCommitted?(operations: number, seconds: number): void;
}

const notFound = () => new BrokerError('not-found', 'task not found');

export function toTask(row: TaskRow): Task {
  const spec = row.spec as Omit<TaskSpec, 'ttlSeconds'>;
  return {
    taskId: row.task_id,
    ownerSpiffeId: row.owner_spiffe_id,
    spec: { action: spec.action, resources: spec.resources, audience: spec.audience, scopes: spec.scopes, params: spec.params, ttlSeconds: row.ttl_seconds },
    taskHash: row.task_hash,
    state: row.state,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    endedAt: row.ended_at,
    endedBy: row.ended_by,
    endReason: row.end_reason,
    approvedBy: row.approved_by,
    approvedAt: row.approved_at,
    approvalComment: row.approval_comment,
    policyRule: row.policy_rule,
  };
}

export function auditActor(actor: Actor): AuditActor {
  return { spiffeId: actor.spiffeId, certThumbprint: actor.certThumbprint, requestId: actor.requestId };
}

/** A result computed inside a transaction that must commit, then surface as an error. */
export class Refusal {
  constructor(readonly error: BrokerError) {}
}

function truncate(text: string, max: number): string {
  return text.length > max ? text.slice(0, max) : text;
}

export class TaskLifecycle {
  readonly limits: LifecycleLimits;
  private readonly clock: () => Date;
  private readonly denials: DenialThrottle;
  /** Task endings of transactions not yet committed (reported to the observer after commit). */
  private readonly endedIn = new WeakMap<Tx, Array<{ state: FinalState; revokedTokens: number }>>();
  private readonly batcher: WriteBatcher;
  private readonly facts = new Map<string, TaskFacts>();
  private readonly read: <R>(name: string, text: string, values: unknown[]) => Promise<R[]>;

  constructor(private readonly deps: LifecycleDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    this.clock = deps.clock ?? (() => new Date());
    this.denials = deps.denials ?? new DenialThrottle({ now: () => this.clock().getTime() });
    const db = deps.db;
    this.batcher = new WriteBatcher({
      apply: deps.store ? (json) => deps.store!.applyBatch(json) : async (json) => (await sql<{ r: unknown[] }>`select tb_apply(${json}::jsonb) as r`.execute(db)).rows[0]!.r,
      limits: deps.batcher,
      observer: deps.store?.writes,
      onBatch: (operations, seconds) => {
        const observer = this.deps.observer;
        observer?.batchCommitted?.(operations, seconds);
        // Every operation appends at least one event, committed when its batch is.
        if (observer?.auditWritten) for (let i = 0; i < operations; i++) observer.auditWritten(seconds);
      },
    });
    this.read = deps.store ? (name, text, values) => deps.store!.read(name, text, values) : async <R>(_name: string, text: string, values: unknown[]) => (await db.executeQuery<R>(CompiledQuery.raw(text, values))).rows;
  }

  /** Write operations waiting for a batch now (admission sheds load before this grows without bound). */
  get writeQueue(): number {
    return this.batcher.queued;
  }

  /** Sends one operation through the write batcher; resolves once its batch committed. */
  private async apply(key: string, op: Record<string, unknown>): Promise<OpResult> {
    const result = (await this.batcher.submit(key, op, op.actor as string)) as OpResult;
    if (result.ended) for (const e of result.ended) this.deps.observer?.taskEnded?.(e.state, e.revoked);
    return result;
  }

  /** Who acts and when, as every operation carries it. */
  private who(actor: Actor, now: Date) {
    return { actor: actor.spiffeId, thumb: actor.certThumbprint, req: actor.requestId, at: now.toISOString(), issuer: this.deps.issuer };
  }

  /** The immutable facts of a task: cached, or read once (undefined: no such task). */
  private async factsOf(taskId: string): Promise<TaskFacts | undefined> {
    const cached = this.facts.get(taskId);
    if (cached) return cached;
    const [row] = await this.read<FactsRow>('tb_task_facts', FACTS_SQL, [taskId]);
    if (!row) return undefined;
    return this.remember(taskId, row);
  }

  private remember(taskId: string, row: FactsRow): TaskFacts {
    const facts: TaskFacts = { ownerSpiffeId: row.owner_spiffe_id, action: row.action, audience: row.audience, scopes: row.scopes, ttlSeconds: row.ttl_seconds, taskHash: row.task_hash, expiresAt: new Date(row.expires_at) };
    if (this.facts.size >= MAX_CACHED_FACTS) this.facts.delete(this.facts.keys().next().value as string);
    this.facts.set(taskId, facts);
    return facts;
  }

  /**
   * A task that does not exist and a task owned by someone else look the same from outside
   * (NOT_FOUND); both are audited, a stranger's repeated probes of one task counted, not each written.
   */
  private async notFound(actor: Actor, taskId: string, operation: string, exists: boolean): Promise<never> {
    const admitted = this.denials.admit(actor.spiffeId, taskId);
    if (admitted.record) {
      await this.apply(exists ? taskId : `actor:${actor.spiffeId}`, {
        op: 'event',
        task_id: exists ? taskId : null,
        type: 'access.denied',
        ...this.who(actor, this.clock()),
        details: {
          operation,
          reason: exists ? 'caller is not the task owner' : 'no such task',
          requested_task_id: taskId,
          ...(admitted.suppressed > 0 ? { suppressed_denials: admitted.suppressed } : {}),
        },
      });
    }
    throw notFound();
  }

  /** The owner's facts of a well-formed task ID, or the not-found path. */
  private async ownedFacts(actor: Actor, taskId: string, operation: string): Promise<TaskFacts> {
    if (!isWellFormedTaskId(taskId)) throw new BrokerError('invalid-argument', 'task_id is not a task ID');
    const facts = await this.factsOf(taskId);
    if (!facts || facts.ownerSpiffeId !== actor.spiffeId) return this.notFound(actor, taskId, operation, facts !== undefined);
    return facts;
  }

  /** A refusal from tb_apply as the error the caller gets (recording it was the database's part). */
  private async refused(actor: Actor, taskId: string, operation: string, result: OpResult): Promise<never> {
    if (result.refused === 'not-found') return this.notFound(actor, taskId, operation, result.exists === true);
    throw new BrokerError(result.refused!, result.message ?? 'refused');
  }

  private static policyDenial(operation: string, decision: PolicyDecision & { allowed: false }, details: Record<string, unknown> = {}): Denial {
    return { kind: 'permission-denied', message: `denied by policy: ${decision.reason}`, details: { operation, reason: `policy: ${decision.reason}`, policy_digest: decision.policyDigest, ...details } };
  }

  get issuer(): string {
    return this.deps.issuer;
  }

  private transact<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.deps.transact ? this.deps.transact(work) : runTransaction(this.deps.db, work);
  }

  async audit(tx: Tx, actor: Actor | AuditActor, input: Omit<AuditEventInput, 'actor' | 'occurredAt'> & { occurredAt?: Date }): Promise<void> {
    const a = 'trustDomain' in actor ? auditActor(actor) : actor;
    const onTimed = this.deps.observer?.auditWritten?.bind(this.deps.observer);
    await appendAuditEvent(tx, { ...input, actor: a, occurredAt: input.occurredAt ?? this.clock() }, { onTimed });
  }

  /** Runs `fn` in a transaction; a Refusal it returns is committed, then thrown. */
  async run<T>(fn: (tx: Tx) => Promise<T | Refusal>): Promise<T> {
    const result = await this.transaction(fn);
    if (result instanceof Refusal) throw result.error;
    return result;
  }

  /** A transaction whose task endings are reported to the observer once it committed. */
  private async transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    let transaction: Tx | undefined;
    const result = await this.transact((tx) => {
      transaction = tx;
      return fn(tx);
    });
    const ended = transaction ? this.endedIn.get(transaction) : undefined;
    if (ended) {
      this.endedIn.delete(transaction as Tx);
      for (const e of ended) this.deps.observer?.taskEnded?.(e.state, e.revokedTokens);
    }
    return result;
  }

  /** The policy's decision for `actor`; with no policy loaded, a denial that says so. */
  decide(actor: Actor, request: { action: string; audience: string; scopes: readonly string[]; taskTtlSeconds?: number }): PolicyDecision {
    const policy = this.deps.policy.current();
    if (!policy) return { allowed: false, reason: 'no policy is loaded: every request is denied', policyDigest: '' };
    return policy.decide({ caller: SpiffeId.parse(actor.spiffeId), ...request });
  }

  async createTask(actor: Actor, input: TaskSpecInput, idempotencyKey?: string): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    const spec = validateTaskSpec(input, this.limits);
    const decision = this.decide(actor, { action: spec.action, audience: spec.audience, scopes: spec.scopes, taskTtlSeconds: spec.ttlSeconds });
    const now = this.clock();
    if (!decision.allowed) {
      const denial = TaskLifecycle.policyDenial('CreateTask', decision, { action: spec.action, audience: spec.audience, scopes: spec.scopes });
      await this.apply(`actor:${actor.spiffeId}`, { op: 'event', task_id: null, type: 'access.denied', ...this.who(actor, now), details: denial.details });
      throw new BrokerError(denial.kind, denial.message);
    }
    // eslint-disable-next-line no-control-regex
    if (idempotencyKey !== undefined && (idempotencyKey.length === 0 || idempotencyKey.length > 128 || /[\x00-\x1f\x7f]/.test(idempotencyKey))) {
      throw new BrokerError('invalid-argument', 'idempotency_key: 1 to 128 printable characters');
    }
    const canonicalSpec = canonicalSpecJson(spec);
    const hash = taskHashOf(canonicalSpec);
    const taskId = newTaskId();
    const expiresAt = new Date(now.getTime() + spec.ttlSeconds * 1000);
    const state: TaskState = decision.requireApproval ? 'PENDING_APPROVAL' : 'ACTIVE';
    const row: TaskRow = {
      task_id: taskId,
      owner_spiffe_id: actor.spiffeId,
      owner_trust_domain: actor.trustDomain,
      spec: { action: spec.action, resources: spec.resources, audience: spec.audience, scopes: spec.scopes, params: spec.params },
      task_hash: hash,
      action: spec.action,
      audience: spec.audience,
      scopes: spec.scopes,
      ttl_seconds: spec.ttlSeconds,
      state,
      idempotency_key: idempotencyKey ?? null,
      owner_cert_thumbprint: actor.certThumbprint,
      created_at: now,
      expires_at: expiresAt,
      ended_at: null,
      ended_by: null,
      end_reason: null,
      approved_by: null,
      approved_at: null,
      approval_comment: null,
      policy_rule: decision.rule,
    };
    // A create with a key the owner used before replays (same spec) or is refused (another spec),
    // decided in the statement, so concurrent creates with one key cannot both insert. The row
    // goes as JSON (dates as ISO text); tb_op_create takes owner, thumbprint and time from the op.
    const result = await this.apply(taskId, {
      op: 'create',
      ...this.who(actor, now),
      idem: row.idempotency_key,
      task: row,
      details: {
        task_hash: hash,
        action: spec.action,
        audience: spec.audience,
        resources: spec.resources,
        scopes: spec.scopes,
        ttl_seconds: spec.ttlSeconds,
        expires_at: expiresAt.toISOString(),
        state,
        policy_rule: decision.rule,
        policy_digest: decision.policyDigest,
        ...(idempotencyKey !== undefined ? { idempotency_key: idempotencyKey } : {}),
      },
    });
    if (result.refused) throw new BrokerError(result.refused, result.message ?? 'refused');
    if (result.replayed && result.task) return { task: toTask(taskRowFromJson(result.task)), canonicalSpec, replayed: true };
    this.remember(taskId, row);
    return { task: toTask(row), canonicalSpec, replayed: false };
  }

  /** A live task past its expiry becomes EXPIRED now, whoever touches it first (or the sweeper). */
  async expireIfDue(tx: Tx, row: TaskRow, requestId: string): Promise<TaskRow> {
    const now = this.clock();
    if (!LIVE_STATES.includes(row.state) || row.expires_at.getTime() > now.getTime()) return row;
    return this.endTask(tx, row, { state: 'EXPIRED', by: this.deps.issuer, reason: 'task ttl elapsed', eventType: 'task.expired', actor: { spiffeId: this.deps.issuer, certThumbprint: null, requestId }, now });
  }

  /** Moves a live task to a terminal state, revokes its tokens and records the event, in `tx` (tb_end_task). */
  async endTask(
    tx: Tx,
    row: TaskRow,
    change: { state: FinalState; by: string; reason: string; eventType: AuditEventInput['type']; actor: Actor | AuditActor; now?: Date; details?: Record<string, unknown> },
  ): Promise<TaskRow & { revokedTokens?: number }> {
    const now = change.now ?? this.clock();
    const a = 'trustDomain' in change.actor ? auditActor(change.actor) : change.actor;
    const details = change.details ? storableJson(JSON.stringify(change.details)) : null;
    const { rows } = await sql<{ r: { task: Record<string, unknown>; revoked: number } }>`select tb_end_task(t, ${change.state}, ${change.by}, ${change.reason}, ${change.eventType}, ${a.spiffeId}, ${a.certThumbprint}, ${a.requestId}, ${now}, ${details}::jsonb) as r from tasks t where t.task_id = ${row.task_id}`.execute(tx);
    const ended = rows[0]!.r;
    const revokedTokens = ended.revoked;
    if (this.deps.observer?.taskEnded) {
      const list = this.endedIn.get(tx) ?? [];
      list.push({ state: change.state, revokedTokens });
      this.endedIn.set(tx, list);
    }
    return { ...taskRowFromJson(ended.task), revokedTokens };
  }

  async getTask(actor: Actor, taskId: string): Promise<Task> {
    const facts = await this.ownedFacts(actor, taskId, 'GetTask');
    const decision = this.decide(actor, { action: facts.action, audience: facts.audience, scopes: facts.scopes });
    const result = await this.apply(taskId, {
      op: 'get',
      task_id: taskId,
      ...this.who(actor, this.clock()),
      ...(decision.allowed ? { rule: decision.rule } : { deny: TaskLifecycle.policyDenial('GetTask', decision) }),
    });
    if (result.refused || !result.task) return this.refused(actor, taskId, 'GetTask', result);
    return toTask(taskRowFromJson(result.task));
  }

  async issueToken(actor: Actor, taskId: string, request: { scopes?: string[]; ttlSeconds?: number } = {}): Promise<IssuedToken> {
    const requestedScopes = request.scopes ?? [];
    if (requestedScopes.length > 0) validateScopes('scopes', requestedScopes);
    if (request.ttlSeconds !== undefined && (!Number.isInteger(request.ttlSeconds) || request.ttlSeconds <= 0)) {
      throw new BrokerError('invalid-argument', 'ttl must be a positive whole number of seconds');
    }
    const facts = await this.ownedFacts(actor, taskId, 'IssueToken');
    const key = await this.deps.keys.activeKey();
    const refuse = (kind: Denial['kind'], message: string, details: Record<string, unknown> = {}): Denial => ({ kind, message, details: { operation: 'IssueToken', reason: message, ...details } });

    // What the broker can decide before the round trip, from the task's immutable facts and the
    // policy at request time; the statement checks the state and records whichever refusal applies.
    let deny: Denial | undefined;
    const extra = requestedScopes.filter((s) => !facts.scopes.includes(s));
    if (extra.length > 0) deny = refuse('permission-denied', `scopes not granted to the task: ${extra.join(' ')}`, { requested_scopes: requestedScopes });
    const scopes = requestedScopes.length > 0 ? requestedScopes : facts.scopes;
    const decision = this.decide(actor, { action: facts.action, audience: facts.audience, scopes, taskTtlSeconds: facts.ttlSeconds });
    if (!deny && !decision.allowed) deny = TaskLifecycle.policyDenial('IssueToken', decision, { scopes });

    const now = this.clock();
    const nowSec = Math.floor(now.getTime() / 1000);
    const wanted = Math.min(request.ttlSeconds ?? this.limits.defaultTokenTtlSeconds, this.limits.maxTokenTtlSeconds, (decision.allowed && decision.maxTokenTtlSeconds) || Infinity);
    const exp = Math.min(nowSec + wanted, Math.floor(facts.expiresAt.getTime() / 1000));
    if (!deny && exp <= nowSec) deny = refuse('failed-precondition', 'task expires in less than a second: no token can be issued');

    const op: Record<string, unknown> = { op: 'issue', task_id: taskId, ...this.who(actor, now) };
    let issued: IssuedToken | undefined;
    if (deny) {
      op.deny = deny;
    } else if (decision.allowed) {
      // The rule may now ask for an approval this task never had (checked on the locked row).
      if (decision.requireApproval) {
        op.approval = true;
        op.approval_denial = { reason: `rule "${decision.rule}" now requires approval and the task was not approved`, digest: decision.policyDigest };
      }
      const jti = newTokenId();
      const claims: TaskTokenClaims = {
        iss: this.deps.issuer,
        sub: facts.ownerSpiffeId,
        aud: facts.audience,
        iat: nowSec,
        nbf: nowSec,
        exp,
        jti,
        task_id: taskId,
        task_hash: facts.taskHash,
        scope: scopes.join(' '),
        cnf: { 'x5t#S256': actor.certThumbprint },
      };
      const expiresAt = new Date(exp * 1000);
      issued = { token: await signTaskToken(key, claims), tokenId: jti, expiresAt, scopes };
      op.token = { jti, kid: key.kid, scopes, issued_at: new Date(nowSec * 1000).toISOString(), expires_at: expiresAt.toISOString() };
      op.details = {
        token_id: jti,
        kid: key.kid,
        scopes,
        audience: claims.aud,
        expires_at: expiresAt.toISOString(),
        cnf_x5t_s256: actor.certThumbprint,
        policy_rule: decision.rule,
        policy_digest: decision.policyDigest,
      };
    }
    const result = await this.apply(taskId, op);
    if (result.refused || !issued) return this.refused(actor, taskId, 'IssueToken', result);
    return issued;
  }

  private async finish(actor: Actor, taskId: string, op: 'CompleteTask' | 'CancelTask', reasonText: string): Promise<{ task: Task; revokedTokens: number }> {
    const reason = truncate(reasonText, 1024);
    await this.ownedFacts(actor, taskId, op);
    const result = await this.apply(taskId, { op: 'finish', task_id: taskId, cancel: op === 'CancelTask', reason, ...this.who(actor, this.clock()) });
    if (result.refused || !result.task) return this.refused(actor, taskId, op, result);
    return { task: toTask(taskRowFromJson(result.task)), revokedTokens: result.revoked ?? 0 };
  }

  completeTask(actor: Actor, taskId: string, outcome: string): Promise<{ task: Task; revokedTokens: number }> {
    return this.finish(actor, taskId, 'CompleteTask', outcome);
  }

  cancelTask(actor: Actor, taskId: string, reason: string): Promise<{ task: Task; revokedTokens: number }> {
    return this.finish(actor, taskId, 'CancelTask', reason);
  }

  /**
   * Verifies a token for a resource server. The caller must be the token's audience. Outcomes
   * are answers, not errors; each is audited (on the task's chain when the token is authentic).
   * The signature is checked here; revocation, the task's state and the binding in the statement
   * (tb_op_verify), after it locked the task's audit chain, so a verification never sees a task
   * between the steps of the transaction that ends it.
   */
  async verifyToken(actor: Actor, token: string, options: { presenterThumbprint?: string; expectedTaskHash?: string; skipBindingCheck?: boolean } = {}): Promise<VerifyResult> {
    const now = this.clock();
    const check = await checkTaskToken(token, this.deps.keys, { issuer: this.deps.issuer, now });
    const bindingChecked = options.presenterThumbprint !== undefined;
    // Tokens are certificate-bound (RFC 8705): without the presenter's certificate the answer
    // cannot be "valid", unless the resource server opted out on the record.
    const bearerOnly = !bindingChecked && options.skipBindingCheck === true;

    if (!check.ok && check.reason !== 'expired') {
      // Not authentic: nothing in it can be trusted, not even which task it names.
      const result: VerifyResult = { valid: false, reason: check.reason, detail: check.detail, bindingChecked };
      await this.apply(`actor:${actor.spiffeId}`, {
        op: 'event',
        task_id: null,
        type: 'token.verified',
        ...this.who(actor, now),
        details: { result: result.reason, detail: result.detail, token_id: null, binding_checked: bindingChecked, ...(bearerOnly ? { binding_check_skipped: true } : {}) },
      });
      return result;
    }
    const claims: Partial<TaskTokenClaims> | undefined = check.claims;
    const taskId = typeof claims?.task_id === 'string' ? claims.task_id : null;
    const result = await this.apply(taskId ?? `actor:${actor.spiffeId}`, {
      op: 'verify',
      task_id: taskId,
      jti: claims?.jti ?? null,
      expired: check.ok ? null : check.detail,
      aud: claims?.aud ?? null,
      sub: claims?.sub ?? null,
      task_hash: claims?.task_hash ?? null,
      cnf: claims?.cnf?.['x5t#S256'] ?? null,
      expected_hash: options.expectedTaskHash,
      presenter: options.presenterThumbprint,
      bearer: bearerOnly,
      ...this.who(actor, now),
    });
    const reason = result.reason ?? 'revoked';
    return { valid: reason === 'valid', reason, detail: result.detail ?? '', bindingChecked, ...(reason === 'valid' && check.ok ? { claims: check.claims } : {}) };
  }

  /** Expires due tasks in batches; safe to run in several replicas at once (SKIP LOCKED). */
  async sweepExpired(options: { batchSize?: number; requestId: string }): Promise<number> {
    const batchSize = options.batchSize ?? 100;
    let total = 0;
    for (;;) {
      const n = await this.transaction(async (tx) => {
        const now = this.clock();
        const due = await tx
          .selectFrom('tasks')
          .selectAll()
          .where('state', 'in', LIVE_STATES)
          .where('expires_at', '<=', now)
          .orderBy('expires_at')
          .limit(batchSize)
          .forUpdate()
          .skipLocked()
          .execute();
        for (const row of due) {
          await this.endTask(tx, row, {
            state: 'EXPIRED',
            by: this.deps.issuer,
            reason: 'task ttl elapsed',
            eventType: 'task.expired',
            actor: { spiffeId: this.deps.issuer, certThumbprint: null, requestId: options.requestId },
            now,
          });
        }
        return due.length;
      });
      total += n;
      if (n < batchSize) return total;
    }
  }

  /** Deletes token rows that expired more than `retentionSeconds` ago (their audit events stay). */
  async pruneTokens(retentionSeconds: number): Promise<number> {
    const cutoff = new Date(this.clock().getTime() - retentionSeconds * 1000);
    const result = await this.deps.db.deleteFrom('tokens').where('expires_at', '<', cutoff).executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  /** For tests and tools: raw access to a task without owner checks (not exposed over the API). */
  async loadTask(taskId: string): Promise<Task | undefined> {
    const row = await this.deps.db.selectFrom('tasks').selectAll().where('task_id', '=', taskId).executeTakeFirst();
    return row ? toTask(row) : undefined;
  }
}

