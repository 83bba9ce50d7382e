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
import type { Actor, Principal, Requester, Task, TaskReadOperation, TaskResult, TaskState } from '../model/task.js';
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
import { freeText, idempotencyKeyArgument, invalid, taskIdArgument, validateTaskSpec, type TaskSpecInput } from './validation.js';
import { RequesterVerifier, requesterArgument, requesterDetails, requesterMismatch, type RequesterInput, type VerifiedRequester } from './gateway.js';
import { decodeCursor, encodeCursor, filterDigest } from './list-cursor.js';
import type { PolicyDecision } from '../policy/policy.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import { SpiffeId } from '../spiffe/id.js';
import { SubjectTokenVerifier } from '../policy/subject-tokens.js';

/** What a follow-up on a task may carry besides its task ID. */
export interface FollowUp {
  /** For a task whose rule binds follow-ups to its session: a subject token of its principal. */
  subjectToken?: string;
  /** A gateway acting for the party that asked it: who that is (checked against the task). */
  onBehalfOf?: RequesterInput;
}

export interface ReadOptions extends FollowUp {
  /** A poll (task.polled, default) or a result read (task.result_read, with the stored result). */
  operation?: TaskReadOperation;
}

export interface CompleteOptions extends FollowUp {
  /** The work's result, kept for the rule's result_retention. */
  result?: { json: string; failed: boolean };
}

/** A stored result is a JSON document of at most this many characters. */
export const MAX_RESULT_CHARS = 512 * 1024;
/** ListOwnTasks pages. */
const DEFAULT_LIST_PAGE = 50;
const MAX_LIST_PAGE = 100;
/** A page token is a small JSON cursor in base64url. */
const MAX_PAGE_TOKEN_CHARS = 1024;

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
  /** The trust bundles a requester's forwarded X509-SVID (on_behalf_of) is verified against; absent: none is accepted. */
  bundles?: X509BundleSource;
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
  readonly #requesters: RequesterVerifier;

  constructor(deps: LifecycleDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    const clock = deps.clock ?? (() => new Date());
    this.units = new UnitOfWork({ store: deps.store, clock, observer: deps.observer });
    this.rows = new TaskRows({ db: deps.store.db, issuer: deps.issuer, observer: deps.observer });
    this.#access = new TaskAccess({ ...deps, clock });
    this.#authority = new TaskAuthority(this.#access, deps.subjects ?? new SubjectTokenVerifier({ now: clock }));
    this.#tokens = new TokenOperations(this.#access, this.#authority, deps.keys, this.limits);
    this.#requesters = new RequesterVerifier({ bundles: deps.bundles, authority: this.#authority, now: clock });
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
    options: { subjectToken?: string; onBehalfOf?: RequesterInput } = {},
  ): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    const access = this.#access;
    const spec = validateTaskSpec(input, this.limits);
    const key = idempotencyKeyArgument(idempotencyKey);
    const onBehalfOf = requesterArgument(options.onBehalfOf);
    if (onBehalfOf && options.subjectToken) {
      throw new BrokerError(
        'invalid-argument',
        'subject_token and on_behalf_of: a task created for a requester is bound to the requester (give its subject token in on_behalf_of)',
      );
    }
    const requester = onBehalfOf ? await this.#verifyRequester(actor, onBehalfOf, 'CreateTask') : undefined;
    if (requester?.kind === 'x509' && requester.spiffeId === actor.spiffeId) {
      throw new BrokerError('invalid-argument', 'on_behalf_of names the caller itself: a workload creates its own tasks without on_behalf_of');
    }
    // Through a gateway, the task is the requester's: owned by its SPIFFE ID, or (a subject
    // token) owned by the gateway and bound to the token's subject. The caller is its gateway.
    const owner =
      requester?.kind === 'x509'
        ? { spiffeId: requester.spiffeId, trustDomain: requester.trustDomain, certThumbprint: requester.certThumbprint }
        : { spiffeId: actor.spiffeId, trustDomain: actor.trustDomain, certThumbprint: actor.certThumbprint };
    const gateway = requester ? actor.spiffeId : null;
    let principal: Principal | null = requester?.kind === 'subject' ? requester.principal : null;
    let principalClaims: Record<string, unknown> | null = requester?.kind === 'subject' ? requester.claims : null;
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
    const decision = access.decide(
      { ...actor, spiffeId: owner.spiffeId },
      {
        action: spec.action,
        audience: spec.audience,
        scopes: spec.scopes,
        taskTtlSeconds: spec.ttlSeconds,
        ...(principal ? { principal: { ...principal, claims: principalClaims ?? {} } } : {}),
        ...(gateway ? { gateway: SpiffeId.parse(gateway) } : {}),
      },
    );
    const now = access.now();
    const requesterEvidence = requester ? { requester: requesterDetails(requester), gateway } : {};
    if (!decision.allowed) {
      const denial = TaskAccess.policyDenial('CreateTask', decision, {
        action: spec.action,
        audience: spec.audience,
        scopes: spec.scopes,
        ...(principal ? { principal } : {}),
        ...requesterEvidence,
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
      owner_spiffe_id: owner.spiffeId,
      owner_trust_domain: owner.trustDomain,
      spec: { action: spec.action, resources: spec.resources, audience: spec.audience, scopes: spec.scopes, params: spec.params },
      task_hash: hash,
      action: spec.action,
      audience: spec.audience,
      scopes: spec.scopes,
      ttl_seconds: spec.ttlSeconds,
      state,
      idempotency_key: key ?? null,
      owner_cert_thumbprint: owner.certThumbprint,
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
      gateway,
      result_failed: null,
    };
    // A create with a key the owner used before replays (same spec) or is refused (another spec),
    // decided in the statement, so concurrent creates with one key cannot both insert. The row
    // goes as JSON (dates as ISO text); tb_op_create takes owner, thumbprint and time from the op.
    const result = await access.apply(taskId, {
      op: 'create',
      ...access.who(actor, now),
      // A gateway's keys are its own: never shared with the requester's own creates or another gateway's.
      idem: row.idempotency_key === null ? null : gateway ? `gw:${gateway}:${row.idempotency_key}` : row.idempotency_key,
      task: row,
      details: {
        ...specEventDetails(spec, hash, expiresAt),
        state,
        policy_rule: decision.rule,
        policy_digest: decision.policyDigest,
        ...(key !== undefined ? { idempotency_key: key } : {}),
        ...(requester ? { owner: owner.spiffeId, ...requesterEvidence } : {}),
      },
    });
    if (result.refused) throw new BrokerError(result.refused, result.message ?? 'refused');
    if (result.replayed && result.task) return { task: toTask(taskRowFromJson(result.task)), canonicalSpec, replayed: true };
    access.remember(taskId, { ...row, resources: spec.resources });
    return { task: toTask(row), canonicalSpec, replayed: false };
  }

  /** The poll (task.polled): readTask with operation 'poll'. */
  async getTask(actor: Actor, taskId: string, options: FollowUp = {}): Promise<Task> {
    return (await this.readTask(actor, taskId, { ...options, operation: 'poll' })).task;
  }

  /**
   * A read of a task: a poll (task.polled) or a result read (task.result_read, whose answer
   * carries the stored result while the rule retains it). The owner's; the gateway's (naming the
   * requester it answers for, when it acts for one); or, when the rule of the task's tree lets
   * delegators read their children (delegation.read_children), a delegator's poll, recorded as
   * task.read_by_delegator.
   */
  async readTask(actor: Actor, taskId: string, options: ReadOptions = {}): Promise<{ task: Task; result: TaskResult | null; resultExpired: boolean }> {
    const access = this.#access;
    const resultRead = options.operation === 'result';
    const operation = resultRead ? 'GetTask(result)' : 'GetTask';
    // Malformed input is refused before the requester's credential costs a signature check.
    taskIdArgument(taskId);
    const onBehalfOf = requesterArgument(options.onBehalfOf);
    const requester = onBehalfOf ? await this.#verifyRequester(actor, onBehalfOf, operation, taskId) : undefined;
    const facts = await this.#followUpFacts(actor, taskId, operation, requester);
    const decision = await this.#authority.decideTask(facts, { scopes: facts.scopes });
    const byDelegator = facts.ownerSpiffeId !== actor.spiffeId && facts.gateway !== actor.spiffeId;
    if (byDelegator && (resultRead || !(decision.allowed && decision.readChildren))) {
      return access.notFound(
        actor,
        taskId,
        operation,
        true,
        resultRead
          ? "caller is a delegator of the task: a task's result is for its owner and gateway"
          : 'caller is a delegator of the task and the policy does not let delegators read their children (delegation.read_children)',
      );
    }
    if (requester) await this.#checkRequester(actor, facts, requester, decision, operation);
    else await this.#authority.checkSession(actor, facts, decision, options.subjectToken, operation);
    const details = {
      ...(byDelegator ? { owner: facts.ownerSpiffeId } : {}),
      ...(requester ? { requester: requesterDetails(requester) } : {}),
    };
    const result = await access.applyOn(facts, {
      op: 'get',
      task_id: taskId,
      operation: resultRead ? 'result' : 'poll',
      ...access.who(actor, access.now()),
      ...(byDelegator ? { delegator_read: true } : {}),
      ...(Object.keys(details).length > 0 ? { details } : {}),
      ...(decision.allowed
        ? { rule: decision.rule, retention_s: decision.resultRetentionSeconds }
        : { deny: TaskAccess.policyDenial(operation, decision, requester ? { requester: requesterDetails(requester) } : {}) }),
    });
    if (result.refused || !result.task) return access.refused(actor, taskId, operation, result);
    const stored = result.result;
    return {
      task: toTask(taskRowFromJson(result.task)),
      result: stored ? { json: stored.json, failed: stored.failed, storedAt: new Date(stored.stored_at), retainedUntil: new Date(stored.retain_until) } : null,
      resultExpired: result.result_expired === true,
    };
  }

  /**
   * The caller's own tasks, newest first; a gateway naming a requester gets only the tasks it
   * serves for that requester. Tasks the policy no longer allows are left out. Recorded as
   * tasks.listed on the caller's chain.
   */
  async listOwnTasks(
    actor: Actor,
    options: { onBehalfOf?: RequesterInput; pageSize?: number; pageToken?: string } = {},
  ): Promise<{ tasks: Task[]; nextPageToken: string | null }> {
    const access = this.#access;
    const pageSize = options.pageSize || DEFAULT_LIST_PAGE;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_LIST_PAGE) throw invalid(`page_size: 1 to ${MAX_LIST_PAGE} (0: ${DEFAULT_LIST_PAGE})`);
    if ((options.pageToken?.length ?? 0) > MAX_PAGE_TOKEN_CHARS) throw invalid(`page_token: at most ${MAX_PAGE_TOKEN_CHARS} characters`);
    const onBehalfOf = requesterArgument(options.onBehalfOf);
    const requester = onBehalfOf ? await this.#verifyRequester(actor, onBehalfOf, 'ListOwnTasks') : undefined;
    const who =
      requester === undefined
        ? { owner: actor.spiffeId }
        : requester.kind === 'x509'
          ? { gateway: actor.spiffeId, owner: requester.spiffeId }
          : { gateway: actor.spiffeId, principal: { iss: requester.principal.iss, sub: requester.principal.sub } };
    const digest = filterDigest({ owner: JSON.stringify(who) });
    const below = options.pageToken ? decodeCursor(options.pageToken, digest) : undefined;
    const rows = await this.rows.listOwn(who, below, pageSize + 1);
    const page = rows.slice(0, pageSize);
    const tasks: Task[] = [];
    for (const row of page) {
      const facts = access.remember(row.task_id, { ...row, resources: (row.spec as { resources: string[] }).resources });
      const decision = await this.#authority.decideTask(facts, { scopes: facts.scopes });
      if (!decision.allowed) continue;
      if (requester && requesterMismatch(facts, requester, decision.bindSession)) continue;
      tasks.push(toTask(row));
    }
    const last = page.at(-1);
    const nextPageToken = rows.length > pageSize && last ? encodeCursor({ createdAt: last.created_at, taskId: last.task_id }, digest) : null;
    await access.recordOnActorChain(actor, 'tasks.listed', {
      operation: 'ListOwnTasks',
      ...(requester ? { requester: requesterDetails(requester) } : {}),
      listed: tasks.map((t) => t.taskId),
      ...(options.pageToken ? { page: 'next' } : {}),
    });
    return { tasks, nextPageToken };
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

  completeTask(actor: Actor, taskId: string, outcome: string, options: CompleteOptions = {}): Promise<Ended> {
    if (options.onBehalfOf) throw invalid('on_behalf_of: a task is completed by its owner or gateway itself, for no requester');
    return this.#finish(actor, taskId, 'CompleteTask', freeText(outcome, 'outcome'), { ...options, result: resultArgument(options.result) });
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

  /** Deletes stored results whose retention ended (their tasks and events stay). */
  purgeResults(): Promise<number> {
    return this.rows.purgeResults(this.#access.now());
  }

  /** For tests and tools: raw access to a task without owner checks (not exposed over the API). */
  loadTask(taskId: string): Promise<Task | undefined> {
    return this.rows.load(taskId);
  }

  /**
   * The facts of a task the caller owns, serves as its gateway or delegated (readTask decides what
   * a delegator may do); else the not-found path. A gateway acting for a requester must be the
   * task's gateway. Callers have checked the task ID.
   */
  async #followUpFacts(actor: Actor, taskId: string, operation: string, requester?: VerifiedRequester): Promise<TaskFacts> {
    const facts = await this.#access.factsOf(taskId, actor.trace);
    if (requester) {
      if (facts && facts.gateway === actor.spiffeId) return facts;
      const why = facts ? 'caller is not the gateway of the task' : undefined;
      return this.#access.notFound(actor, taskId, operation, facts !== undefined, why, this.#requesterEvidence(requester));
    }
    if (facts && (facts.ownerSpiffeId === actor.spiffeId || facts.gateway === actor.spiffeId || facts.delegators.includes(actor.spiffeId))) return facts;
    return this.#access.notFound(actor, taskId, operation, facts !== undefined);
  }

  /** Verifies a forwarded requester credential; a refusal is audited on the caller's record and thrown. */
  async #verifyRequester(actor: Actor, requester: Requester, operation: string, taskId?: string): Promise<VerifiedRequester> {
    try {
      return await this.#requesters.verify(requester);
    } catch (err) {
      if (err instanceof BrokerError) {
        await this.#access.recordOnActorChain(actor, 'access.denied', { operation, reason: err.message, ...(taskId ? { requested_task_id: taskId } : {}) });
      }
      throw err;
    }
  }

  /** A gateway answering for `requester`: it must be the one the task was created for, else the not-found path. */
  async #checkRequester(actor: Actor, facts: TaskFacts, requester: VerifiedRequester, decision: PolicyDecision, operation: string): Promise<void> {
    const why = requesterMismatch(facts, requester, decision.allowed && decision.bindSession);
    if (why) await this.#access.notFound(actor, facts.taskId, operation, true, why, this.#requesterEvidence(requester));
  }

  #requesterEvidence(requester: VerifiedRequester): { who: string; details: Record<string, unknown> } {
    const details = requesterDetails(requester);
    return { who: JSON.stringify(details), details: { requester: details } };
  }

  /**
   * Complete and cancel are the owner's, whatever the policy says now (ending a task only takes
   * authority away), except that a task bound to a session needs that session.
   */
  async #finish(actor: Actor, taskId: string, operation: 'CompleteTask' | 'CancelTask', reason: string, options: CompleteOptions): Promise<Ended> {
    const access = this.#access;
    taskIdArgument(taskId);
    const onBehalfOf = requesterArgument(options.onBehalfOf);
    const requester = onBehalfOf ? await this.#verifyRequester(actor, onBehalfOf, operation, taskId) : undefined;
    const facts = requester
      ? await this.#followUpFacts(actor, taskId, operation, requester)
      : operation === 'CompleteTask'
        ? await access.servedFacts(actor, taskId, operation)
        : await access.ownedFacts(actor, taskId, operation);
    let retentionSeconds = 0;
    if (facts.principal || requester || options.result) {
      const decision = await this.#authority.decideTask(facts, { scopes: facts.scopes });
      if (requester) await this.#checkRequester(actor, facts, requester, decision, operation);
      else await this.#authority.checkSession(actor, facts, decision, options.subjectToken, operation);
      // A rule that no longer allows the task keeps no result of it (closed).
      if (decision.allowed) retentionSeconds = decision.resultRetentionSeconds;
    }
    const result = await access.applyOn(facts, {
      op: 'finish',
      task_id: taskId,
      cancel: operation === 'CancelTask',
      reason,
      ...access.who(actor, access.now()),
      ...(requester ? { details: { requester: requesterDetails(requester) } } : {}),
      ...(options.result ? { result: options.result, retention_s: retentionSeconds } : {}),
    });
    if (result.refused || !result.task) return access.refused(actor, taskId, operation, result);
    return { task: toTask(taskRowFromJson(result.task)), revokedTokens: result.revoked ?? 0 };
  }
}

/** A result as given: a JSON document within MAX_RESULT_CHARS. */
function resultArgument(result: { json: string; failed: boolean } | undefined): { json: string; failed: boolean } | undefined {
  if (!result) return undefined;
  if (result.json.length > MAX_RESULT_CHARS) throw invalid(`result.json: at most ${MAX_RESULT_CHARS} characters`);
  try {
    JSON.parse(result.json);
  } catch (err) {
    throw invalid(`result.json is not JSON: ${(err as Error).message}`);
  }
  return { json: result.json, failed: result.failed };
}

export type { IssuedToken, IssueRequest, VerifyResult, VerifyOptions } from './token-operations.js';
export type { DelegationRequest, DelegatedSpecInput } from './delegation.js';
export type { TaskObserver as LifecycleObserver } from './unit-of-work.js';
export type { LifecycleLimits } from './limits.js';
export { DEFAULT_LIMITS } from './limits.js';
