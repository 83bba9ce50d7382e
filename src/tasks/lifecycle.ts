/**
 * The task lifecycle as workloads and resource servers see it: create, poll, issue tokens,
 * complete, cancel, verify; and, for the broker itself, expiry sweeps and token pruning.
 *
 * Each of the six RPCs reaches the database once (task-access.ts: one operation through the
 * write batcher, many concurrent calls in one commit). Refusals that must be on record (a
 * stranger's poll, a token refused) are recorded in that same statement before the call fails:
 * if the event cannot be stored, the request fails too (fail closed). Issue and verify live in
 * token-operations.ts; the admin plane (admin.ts) and the sweeper use the unit of work and the
 * task rows this class assembles.
 */
import type { DenialThrottle } from '../audit/denial-throttle.js';
import { BrokerError } from '../errors.js';
import type { Actor, Principal, Task, TaskState } from '../model/task.js';
import type { PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import type { TaskRow } from '../store/schema.js';
import type { WriteBatcherLimits } from '../store/write-batcher.js';
import { newTaskId } from './ids.js';
import { DEFAULT_LIMITS, type LifecycleLimits } from './limits.js';
import { canonicalSpecJson, specEventDetails, taskHashOf } from './spec.js';
import { TaskAuthority } from './authority.js';
import { delegateTask, type DelegationRequest } from './delegation.js';
import { TaskAccess, type TaskFacts } from './task-access.js';
import { TaskRows, taskRowFromJson, toTask } from './task-rows.js';
import { TokenOperations, type IssuedToken, type IssueRequest, type TokenKeys, type VerifyOptions, type VerifyResult } from './token-operations.js';
import { recordTokenUses, type TokenUseCounts, type TokenUseInput } from './token-use-reports.js';
import { UnitOfWork, type TaskObserver } from './unit-of-work.js';
import { freeText, idempotencyKeyArgument, taskIdArgument, validateTaskSpec, type TaskSpecInput } from './validation.js';
import { SubjectTokenVerifier } from '../policy/subject-tokens.js';

/** What a follow-up on a task may carry besides its task ID. */
export interface FollowUp {
  /** For a task whose rule binds follow-ups to its session: a subject token of its principal. */
  subjectToken?: string;
}

/** What the task domain needs of the store: the write path's statement and reads, transactions, and the write health they feed. */
export type TaskStore = Pick<Store, 'db' | 'transaction' | 'applyBatch' | 'read' | 'writes'>;

export interface LifecycleDeps {
  store: TaskStore;
  keys: TokenKeys;
  /** The token issuer (`iss`) and the actor recorded for the broker's own actions (expiry). */
  issuer: string;
  /** Consulted on every request; no policy (current() undefined) denies everything. */
  policy: PolicySource;
  limits?: Partial<LifecycleLimits>;
  clock?: () => Date;
  /** Told about outcomes, for metrics; absent: nothing is told. */
  observer?: TaskObserver;
  /** How many of a stranger's denied probes per task are written (default: DenialThrottle's). */
  denials?: DenialThrottle;
  /** Bounds of the write batcher (group commit). */
  batcher?: Partial<WriteBatcherLimits>;
  /** Verifies subject tokens against the policy's subject_issuers (default: one of its own). */
  subjects?: SubjectTokenVerifier;
}

export type Ended = { task: Task; revokedTokens: number };

export class TaskLifecycle {
  readonly limits: LifecycleLimits;
  /** Transactions with audit and after-commit hooks: the admin plane's and the sweeper's way to change tasks. */
  readonly units: UnitOfWork;
  /** Task-row statements outside the write batcher. */
  readonly rows: TaskRows;
  readonly #access: TaskAccess;
  readonly #authority: TaskAuthority;
  readonly #tokens: TokenOperations;

  constructor(deps: LifecycleDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    const clock = deps.clock ?? (() => new Date());
    this.units = new UnitOfWork({ store: deps.store, clock, observer: deps.observer });
    this.rows = new TaskRows({ db: deps.store.db, issuer: deps.issuer, observer: deps.observer });
    this.#access = new TaskAccess({ ...deps, clock });
    this.#authority = new TaskAuthority(this.#access, deps.subjects ?? new SubjectTokenVerifier({ now: clock }));
    this.#tokens = new TokenOperations(this.#access, this.#authority, deps.keys, this.limits);
  }

  get issuer(): string {
    return this.#access.issuer;
  }

  /** Write operations waiting for a batch now (admission sheds load before this grows without bound). */
  get writeQueue(): number {
    return this.#access.writeQueue;
  }

  /** Offline verifications reported by the tokens' audience, recorded as token.used events (token-use-reports.ts). */
  reportTokenUses(actor: Actor, uses: TokenUseInput[]): Promise<TokenUseCounts> {
    return recordTokenUses(this.#access, actor, uses);
  }

  async createTask(
    actor: Actor,
    input: TaskSpecInput,
    idempotencyKey?: string,
    options: { subjectToken?: string } = {},
  ): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    const access = this.#access;
    const spec = validateTaskSpec(input, this.limits);
    const key = idempotencyKeyArgument(idempotencyKey);
    let principal: Principal | null = null;
    let principalClaims: Record<string, unknown> | null = null;
    if (options.subjectToken) {
      const subject = await this.#authority.verifySubject(options.subjectToken);
      if (!subject.ok) {
        const reason = `subject_token refused: ${subject.reason}`;
        await access.recordOnActorChain(actor, 'access.denied', { operation: 'CreateTask', reason, action: spec.action, audience: spec.audience });
        throw new BrokerError(subject.kind, reason);
      }
      principal = subject.principal;
      principalClaims = subject.claims;
    }
    const decision = access.decide(actor, {
      action: spec.action,
      audience: spec.audience,
      scopes: spec.scopes,
      taskTtlSeconds: spec.ttlSeconds,
      ...(principal ? { principal: { ...principal, claims: principalClaims ?? {} } } : {}),
    });
    const now = access.now();
    if (!decision.allowed) {
      const denial = TaskAccess.policyDenial('CreateTask', decision, {
        action: spec.action,
        audience: spec.audience,
        scopes: spec.scopes,
        ...(principal ? { principal } : {}),
      });
      await access.recordOnActorChain(actor, 'access.denied', denial.details, now);
      throw new BrokerError(denial.kind, denial.message);
    }
    const canonicalSpec = canonicalSpecJson(spec, { principal });
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
      idempotency_key: key ?? null,
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
      parent_task_id: null,
      root_task_id: null,
      depth: 0,
      delegators: [],
      principal,
      principal_claims: principalClaims,
      approver: null,
      has_delegated: false,
      gateway: null,
      result_failed: null,
    };
    // A create with a key the owner used before replays (same spec) or is refused (another spec),
    // decided in the statement, so concurrent creates with one key cannot both insert. The row
    // goes as JSON (dates as ISO text); tb_op_create takes owner, thumbprint and time from the op.
    const result = await access.apply(taskId, {
      op: 'create',
      ...access.who(actor, now),
      idem: row.idempotency_key,
      task: row,
      details: {
        ...specEventDetails(spec, hash, expiresAt),
        state,
        policy_rule: decision.rule,
        policy_digest: decision.policyDigest,
        ...(key !== undefined ? { idempotency_key: key } : {}),
      },
    });
    if (result.refused) throw new BrokerError(result.refused, result.message ?? 'refused');
    if (result.replayed && result.task) return { task: toTask(taskRowFromJson(result.task)), canonicalSpec, replayed: true };
    access.remember(taskId, { ...row, resources: spec.resources });
    return { task: toTask(row), canonicalSpec, replayed: false };
  }

  /**
   * The poll. The owner's; or, when the rule of the task's tree lets delegators read their
   * children (delegation.read_children), also a delegator's, recorded as task.read_by_delegator.
   */
  async getTask(actor: Actor, taskId: string, options: FollowUp = {}): Promise<Task> {
    const access = this.#access;
    const facts = await this.#followUpFacts(actor, taskId, 'GetTask');
    const decision = await this.#authority.decideTask(facts, { scopes: facts.scopes });
    const byDelegator = facts.ownerSpiffeId !== actor.spiffeId;
    if (byDelegator && !(decision.allowed && decision.readChildren)) {
      return access.notFound(
        actor,
        taskId,
        'GetTask',
        true,
        'caller is a delegator of the task and the policy does not let delegators read their children (delegation.read_children)',
      );
    }
    await this.#authority.checkSession(actor, facts, decision, options.subjectToken, 'GetTask');
    const result = await access.applyOn(facts, {
      op: 'get',
      task_id: taskId,
      ...access.who(actor, access.now()),
      ...(byDelegator ? { delegator_read: true, details: { owner: facts.ownerSpiffeId } } : {}),
      ...(decision.allowed ? { rule: decision.rule } : { deny: TaskAccess.policyDenial('GetTask', decision) }),
    });
    if (result.refused || !result.task) return access.refused(actor, taskId, 'GetTask', result);
    return toTask(taskRowFromJson(result.task));
  }

  issueToken(actor: Actor, taskId: string, request: IssueRequest = {}): Promise<IssuedToken> {
    return this.#tokens.issue(actor, taskId, request);
  }

  /** DelegateTask (delegation.ts): a child task owned by the delegatee, within the parent's grant. */
  delegateTask(actor: Actor, request: DelegationRequest): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    return delegateTask({ access: this.#access, authority: this.#authority, limits: this.limits }, actor, request);
  }

  verifyToken(actor: Actor, token: string, options: VerifyOptions = {}): Promise<VerifyResult> {
    return this.#tokens.verify(actor, token, options);
  }

  completeTask(actor: Actor, taskId: string, outcome: string, options: FollowUp = {}): Promise<Ended> {
    return this.#finish(actor, taskId, 'CompleteTask', freeText(outcome, 'outcome'), options);
  }

  cancelTask(actor: Actor, taskId: string, reason: string, options: FollowUp = {}): Promise<Ended> {
    return this.#finish(actor, taskId, 'CancelTask', freeText(reason, 'reason'), options);
  }

  /** Expires due tasks in batches; safe to run in several replicas at once (SKIP LOCKED). */
  sweepExpired(options: { batchSize?: number; requestId: string }): Promise<number> {
    return this.rows.sweepExpired(this.units, options);
  }

  /** Deletes token rows that expired more than `retentionSeconds` ago (their audit events stay). */
  pruneTokens(retentionSeconds: number): Promise<number> {
    return this.rows.pruneTokens(new Date(this.#access.now().getTime() - retentionSeconds * 1000));
  }

  /** For tests and tools: raw access to a task without owner checks (not exposed over the API). */
  loadTask(taskId: string): Promise<Task | undefined> {
    return this.rows.load(taskId);
  }

  /** The facts of a task the caller owns or delegated (GetTask decides what a delegator may do); else the not-found path. */
  async #followUpFacts(actor: Actor, taskId: string, operation: string): Promise<TaskFacts> {
    taskIdArgument(taskId);
    const facts = await this.#access.factsOf(taskId);
    if (facts && (facts.ownerSpiffeId === actor.spiffeId || facts.delegators.includes(actor.spiffeId))) return facts;
    return this.#access.notFound(actor, taskId, operation, facts !== undefined);
  }

  /**
   * Complete and cancel are the owner's, whatever the policy says now (ending a task only takes
   * authority away), except that a task bound to a session needs that session.
   */
  async #finish(actor: Actor, taskId: string, operation: 'CompleteTask' | 'CancelTask', reason: string, options: FollowUp): Promise<Ended> {
    const access = this.#access;
    const facts = await access.ownedFacts(actor, taskId, operation);
    if (facts.principal) {
      const decision = await this.#authority.decideTask(facts, { scopes: facts.scopes });
      await this.#authority.checkSession(actor, facts, decision, options.subjectToken, operation);
    }
    const result = await access.applyOn(facts, {
      op: 'finish',
      task_id: taskId,
      cancel: operation === 'CancelTask',
      reason,
      ...access.who(actor, access.now()),
    });
    if (result.refused || !result.task) return access.refused(actor, taskId, operation, result);
    return { task: toTask(taskRowFromJson(result.task)), revokedTokens: result.revoked ?? 0 };
  }
}

export type { IssuedToken, IssueRequest, VerifyResult, VerifyOptions } from './token-operations.js';
export type { DelegationRequest, DelegatedSpecInput } from './delegation.js';
export type { TaskObserver as LifecycleObserver } from './unit-of-work.js';
export type { LifecycleLimits } from './limits.js';
export { DEFAULT_LIMITS } from './limits.js';
