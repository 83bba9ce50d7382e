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
import type { Actor, Task, TaskState } from '../model/task.js';
import type { PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import type { TaskRow } from '../store/schema.js';
import type { WriteBatcherLimits } from '../store/write-batcher.js';
import { newTaskId } from './ids.js';
import { DEFAULT_LIMITS, type LifecycleLimits } from './limits.js';
import { canonicalSpecJson, taskHashOf } from './spec.js';
import { TaskAccess } from './task-access.js';
import { TaskRows, taskRowFromJson, toTask } from './task-rows.js';
import { TokenOperations, type IssuedToken, type TokenKeys, type VerifyOptions, type VerifyResult } from './token-operations.js';
import { recordTokenUses, type TokenUseCounts, type TokenUseInput } from './token-use-reports.js';
import { UnitOfWork, type TaskObserver } from './unit-of-work.js';
import { freeText, idempotencyKeyArgument, validateTaskSpec, type TaskSpecInput } from './validation.js';

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
}

export type Ended = { task: Task; revokedTokens: number };

export class TaskLifecycle {
  readonly limits: LifecycleLimits;
  /** Transactions with audit and after-commit hooks: the admin plane's and the sweeper's way to change tasks. */
  readonly units: UnitOfWork;
  /** Task-row statements outside the write batcher. */
  readonly rows: TaskRows;
  readonly #access: TaskAccess;
  readonly #tokens: TokenOperations;

  constructor(deps: LifecycleDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    const clock = deps.clock ?? (() => new Date());
    this.units = new UnitOfWork({ store: deps.store, clock, observer: deps.observer });
    this.rows = new TaskRows({ db: deps.store.db, issuer: deps.issuer, observer: deps.observer });
    this.#access = new TaskAccess({ ...deps, clock });
    this.#tokens = new TokenOperations(this.#access, deps.keys, this.limits);
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

  async createTask(actor: Actor, input: TaskSpecInput, idempotencyKey?: string): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    const access = this.#access;
    const spec = validateTaskSpec(input, this.limits);
    const decision = access.decide(actor, { action: spec.action, audience: spec.audience, scopes: spec.scopes, taskTtlSeconds: spec.ttlSeconds });
    const now = access.now();
    if (!decision.allowed) {
      const denial = TaskAccess.policyDenial('CreateTask', decision, { action: spec.action, audience: spec.audience, scopes: spec.scopes });
      await access.recordOnActorChain(actor, 'access.denied', denial.details, now);
      throw new BrokerError(denial.kind, denial.message);
    }
    const key = idempotencyKeyArgument(idempotencyKey);
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
        ...(key !== undefined ? { idempotency_key: key } : {}),
      },
    });
    if (result.refused) throw new BrokerError(result.refused, result.message ?? 'refused');
    if (result.replayed && result.task) return { task: toTask(taskRowFromJson(result.task)), canonicalSpec, replayed: true };
    access.remember(taskId, row);
    return { task: toTask(row), canonicalSpec, replayed: false };
  }

  async getTask(actor: Actor, taskId: string): Promise<Task> {
    const access = this.#access;
    const facts = await access.ownedFacts(actor, taskId, 'GetTask');
    const decision = access.decide(actor, { action: facts.action, audience: facts.audience, scopes: facts.scopes });
    const result = await access.apply(taskId, {
      op: 'get',
      task_id: taskId,
      ...access.who(actor, access.now()),
      ...(decision.allowed ? { rule: decision.rule } : { deny: TaskAccess.policyDenial('GetTask', decision) }),
    });
    if (result.refused || !result.task) return access.refused(actor, taskId, 'GetTask', result);
    return toTask(taskRowFromJson(result.task));
  }

  issueToken(actor: Actor, taskId: string, request: { scopes?: string[]; ttlSeconds?: number } = {}): Promise<IssuedToken> {
    return this.#tokens.issue(actor, taskId, request);
  }

  verifyToken(actor: Actor, token: string, options: VerifyOptions = {}): Promise<VerifyResult> {
    return this.#tokens.verify(actor, token, options);
  }

  completeTask(actor: Actor, taskId: string, outcome: string): Promise<Ended> {
    return this.#finish(actor, taskId, 'CompleteTask', freeText(outcome, 'outcome'));
  }

  cancelTask(actor: Actor, taskId: string, reason: string): Promise<Ended> {
    return this.#finish(actor, taskId, 'CancelTask', freeText(reason, 'reason'));
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

  async #finish(actor: Actor, taskId: string, operation: 'CompleteTask' | 'CancelTask', reason: string): Promise<Ended> {
    const access = this.#access;
    await access.ownedFacts(actor, taskId, operation);
    const result = await access.apply(taskId, {
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

export type { IssuedToken, VerifyResult, VerifyOptions } from './token-operations.js';
export type { TaskObserver as LifecycleObserver } from './unit-of-work.js';
export type { LifecycleLimits } from './limits.js';
export { DEFAULT_LIMITS } from './limits.js';
