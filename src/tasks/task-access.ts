/**
 * What the six workload RPCs share: the one round trip (an operation handed to the write batcher,
 * whose statement tb_apply, migrations/0003, locks, checks the state, writes and appends the audit
 * event for many concurrent calls in one commit), the task's immutable facts (cached once read,
 * so policy is decided and tokens are signed before that round trip), the policy decision at
 * request time, and the not-found path that strangers and missing tasks share.
 *
 * The call's trace travels with every operation (who()): its trace id in the JSON (`trace`, which
 * tb_apply puts into each audit event the operation appends, migrations/0007), and its span
 * context under a symbol key that JSON leaves out (the parent of the database span, apply()).
 */
import { DenialThrottle } from '../audit/denial-throttle.js';
import { BrokerError } from '../errors.js';
import type { Actor, CallTrace, FinalState, Principal, VerifyReason } from '../model/task.js';
import { startDatabaseSpan, tracingEnabled } from '../observability/tracing.js';
import type { Policy, PolicyDecision, PolicyRequest } from '../policy/policy.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import type { Store } from '../store/database.js';
import type { TaskRow } from '../store/schema.js';
import { WriteBatcher, type WriteBatcherLimits } from '../store/write-batcher.js';
import { taskIdArgument } from './validation.js';
import type { TaskObserver } from './unit-of-work.js';

/** What never changes about a task once created: enough to decide policy and sign a token before the one round trip. */
export interface TaskFacts {
  taskId: string;
  ownerSpiffeId: string;
  action: string;
  audience: string;
  scopes: string[];
  resources: string[];
  ttlSeconds: number;
  taskHash: string;
  expiresAt: Date;
  /** Delegation: null, null, 0 and [] for a root task. */
  parentTaskId: string | null;
  rootTaskId: string | null;
  depth: number;
  /** Most recent first. */
  delegators: string[];
  principal: Principal | null;
  principalClaims: Record<string, unknown> | null;
  /** The workload that created the task for its requester and serves it; null for a task its owner created. */
  gateway: string | null;
}

/** The columns TaskFacts come from (FACTS_SQL reads them; a created row has them). */
export type FactsRow = Pick<TaskRow, 'task_id' | 'owner_spiffe_id' | 'action' | 'audience' | 'scopes' | 'ttl_seconds' | 'task_hash' | 'expires_at'> &
  Partial<Pick<TaskRow, 'parent_task_id' | 'root_task_id' | 'depth' | 'delegators' | 'principal' | 'principal_claims' | 'gateway'>> & {
    /** The spec's resources (FACTS_SQL reads spec->'resources'). */
    resources: string[];
  };

const FACTS_SQL =
  "select task_id, owner_spiffe_id, action, audience, scopes, ttl_seconds, task_hash, expires_at, spec->'resources' as resources, parent_task_id, root_task_id, depth, delegators, principal, principal_claims, gateway from tasks where task_id = $1";

/** Where an operation carries its call's span context (not sent to the database: JSON skips symbol keys). */
export const CALL_TRACE: unique symbol = Symbol('call trace');

/** Task facts kept per replica; the oldest are forgotten first (a miss costs one read). */
const MAX_CACHED_FACTS = 20_000;

/** A refusal decided by the broker before the round trip, recorded by the database after it locked the task. */
export interface Denial {
  kind: 'permission-denied' | 'failed-precondition';
  message: string;
  details: Record<string, unknown>;
}

/** The result of one operation of tb_apply (migrations/0003). */
export interface OpResult {
  refused?: 'not-found' | 'already-exists' | 'permission-denied' | 'failed-precondition';
  message?: string;
  exists?: boolean;
  task?: Record<string, unknown>;
  replayed?: boolean;
  revoked?: number;
  ended?: Array<{ state: FinalState; revoked: number }>;
  reason?: VerifyReason;
  detail?: string;
  /** VerifyToken of a use-limited token accepted now: the uses it has left. */
  uses_left?: number | null;
  /** GetTask with operation 'result': the stored result while retained, or that its retention ended. */
  result?: { json: string; failed: boolean; stored_at: string; retain_until: string };
  result_expired?: boolean;
}

export interface TaskAccessDeps {
  issuer: string;
  /** Consulted on every request; no policy (current() undefined) denies everything. */
  policy: PolicySource;
  clock: () => Date;
  observer?: TaskObserver;
  /** How many of a stranger's denied probes per task are written (default: DenialThrottle's). */
  denials?: DenialThrottle;
  /** The write path's statement and reads (prepared statements), and the write health they feed. */
  store: Pick<Store, 'applyBatch' | 'read' | 'writes'>;
  batcher?: Partial<WriteBatcherLimits>;
}

export class TaskAccess {
  readonly #deps: TaskAccessDeps;
  readonly #denials: DenialThrottle;
  readonly #batcher: WriteBatcher;
  readonly #facts = new Map<string, TaskFacts>();

  constructor(deps: TaskAccessDeps) {
    this.#deps = deps;
    this.#denials = deps.denials ?? new DenialThrottle({ now: () => deps.clock().getTime() });
    const { store, observer } = deps;
    this.#batcher = new WriteBatcher({
      apply: (json) => store.applyBatch(json),
      limits: deps.batcher,
      observer: store.writes,
      onBatch: (operations, seconds) => {
        observer?.batchCommitted?.(operations, seconds);
        // Every operation appends at least one event, committed when its batch is.
        if (observer?.auditWritten) for (let i = 0; i < operations; i++) observer.auditWritten(seconds);
      },
    });
  }

  get issuer(): string {
    return this.#deps.issuer;
  }

  now(): Date {
    return this.#deps.clock();
  }

  /** Write operations waiting for a batch now (admission sheds load before this grows without bound). */
  get writeQueue(): number {
    return this.#batcher.queued;
  }

  /** Sends one operation through the write batcher; resolves once its batch committed. */
  async apply(key: string, op: Record<string, unknown>): Promise<OpResult> {
    const result = (tracingEnabled() ? await this.#tracedSubmit(key, op) : await this.#batcher.submit(key, op, op.actor as string)) as OpResult;
    if (result.ended) for (const e of result.ended) this.#deps.observer?.taskEnded?.(e.state, e.revoked);
    return result;
  }

  /** submit() inside the call's database span: from queueing to its batch's commit, the batch size on it. */
  async #tracedSubmit(key: string, op: Record<string, unknown>): Promise<unknown> {
    const span = startDatabaseSpan((op as { [CALL_TRACE]?: CallTrace })[CALL_TRACE], 'tb_apply', {
      'db.operation.name': 'tb_apply',
      'db.stored_procedure.name': 'tb_apply',
      'taskbroker.operation': String(op.op),
    });
    try {
      const result = await this.#batcher.submit(key, op, op.actor as string, span);
      span?.end();
      return result;
    } catch (err) {
      span?.end(err);
      throw err;
    }
  }

  /**
   * Sends one operation on an existing task: its lock key is the task's tree root (lockKey), and
   * the op names the root (`root`, '' for a root task) so the statement locks it first without
   * looking it up (root_task_id never changes).
   */
  applyOn(facts: Pick<TaskFacts, 'taskId' | 'rootTaskId'>, op: Record<string, unknown>): Promise<OpResult> {
    return this.apply(TaskAccess.lockKey(facts), { ...op, root: facts.rootTaskId ?? '' });
  }

  /** Records one event that concerns no task on the actor's own chain. */
  recordOnActorChain(actor: Actor, type: string, details: Record<string, unknown>, now = this.now()): Promise<OpResult> {
    return this.apply(`actor:${actor.spiffeId}`, { op: 'event', task_id: null, type, ...this.who(actor, now), details });
  }

  /** Who acts and when, as every operation carries it, and the call's trace when it has one. */
  who(actor: Actor, now: Date) {
    const who = { actor: actor.spiffeId, thumb: actor.certThumbprint, req: actor.requestId, at: now.toISOString(), issuer: this.#deps.issuer };
    return actor.trace ? { ...who, trace: actor.trace.traceId, [CALL_TRACE]: actor.trace } : who;
  }

  /** The policy in force (undefined: none, so everything is denied). */
  policy(): Policy | undefined {
    return this.#deps.policy.current();
  }

  /** The policy's decision for `actor`; with no policy loaded, a denial that says so. */
  decide(actor: Actor, request: Omit<PolicyRequest, 'caller'>): PolicyDecision {
    const policy = this.#deps.policy.current();
    if (!policy) return { allowed: false, reason: 'no policy is loaded: every request is denied', policyDigest: '' };
    return policy.decide({ caller: SpiffeId.parse(actor.spiffeId), ...request });
  }

  /** The write batcher's lock key of an operation on a task: its tree's root, so a tree's operations in a batch lock in one order. */
  static lockKey(facts: Pick<TaskFacts, 'taskId' | 'rootTaskId'>): string {
    return facts.rootTaskId ?? facts.taskId;
  }

  static policyDenial(operation: string, decision: PolicyDecision & { allowed: false }, details: Record<string, unknown> = {}): Denial {
    return {
      kind: 'permission-denied',
      message: `denied by policy: ${decision.reason}`,
      details: { operation, reason: `policy: ${decision.reason}`, policy_digest: decision.policyDigest, ...details },
    };
  }

  /** Keeps the facts of a task this replica created or read. */
  remember(taskId: string, row: FactsRow): TaskFacts {
    const facts: TaskFacts = {
      taskId,
      ownerSpiffeId: row.owner_spiffe_id,
      action: row.action,
      audience: row.audience,
      scopes: row.scopes,
      resources: row.resources,
      ttlSeconds: row.ttl_seconds,
      taskHash: row.task_hash,
      expiresAt: new Date(row.expires_at),
      parentTaskId: row.parent_task_id ?? null,
      rootTaskId: row.root_task_id ?? null,
      depth: row.depth ?? 0,
      delegators: row.delegators ?? [],
      principal: row.principal ?? null,
      principalClaims: row.principal_claims ?? null,
      gateway: row.gateway ?? null,
    };
    if (this.#facts.size >= MAX_CACHED_FACTS) this.#facts.delete(this.#facts.keys().next().value as string);
    this.#facts.set(taskId, facts);
    return facts;
  }

  /** The facts of a well-formed task ID the caller owns or serves as its gateway, or the not-found path. */
  async ownedFacts(actor: Actor, taskId: string, operation: string): Promise<TaskFacts> {
    taskIdArgument(taskId);
    const facts = await this.#factsOf(taskId, actor.trace);
    if (!facts || (facts.ownerSpiffeId !== actor.spiffeId && facts.gateway !== actor.spiffeId)) {
      return this.notFound(actor, taskId, operation, facts !== undefined);
    }
    return facts;
  }

  /**
   * ownedFacts for what only whoever serves the task may do (issue its tokens, complete it,
   * delegate from it): a task created through a gateway is served by the gateway, and its owner
   * (the requester) may read and cancel it but not go around the gateway (PERMISSION_DENIED,
   * audited).
   */
  async servedFacts(actor: Actor, taskId: string, operation: string): Promise<TaskFacts> {
    const facts = await this.ownedFacts(actor, taskId, operation);
    // ownedFacts let in only the owner and the gateway: anyone but the gateway here is the owner.
    if (facts.gateway !== null && facts.gateway !== actor.spiffeId) {
      const reason = `the task is served by its gateway ${facts.gateway}: its tokens, its completion and delegation from it are the gateway's (its owner may read and cancel it)`;
      await this.applyOn(facts, { op: 'event', task_id: taskId, type: 'access.denied', ...this.who(actor, this.now()), details: { operation, reason } });
      throw new BrokerError('permission-denied', reason);
    }
    return facts;
  }

  /** The facts of any task (undefined: no such task); no owner check. A read is a span of `trace`. */
  factsOf(taskId: string, trace?: CallTrace): Promise<TaskFacts | undefined> {
    return this.#factsOf(taskId, trace);
  }

  /** A refusal from tb_apply as the error the caller gets (recording it was the database's part). */
  async refused(actor: Actor, taskId: string, operation: string, result: OpResult): Promise<never> {
    if (result.refused === 'not-found') return this.notFound(actor, taskId, operation, result.exists === true);
    throw new BrokerError(result.refused!, result.message ?? 'refused');
  }

  /**
   * A task that does not exist and a task owned by someone else look the same from outside
   * (NOT_FOUND); both are audited, a stranger's repeated probes of one task counted, not each written.
   */
  async notFound(
    actor: Actor,
    taskId: string,
    operation: string,
    exists: boolean,
    why?: string,
    extra?: { who: string; details: Record<string, unknown> },
  ): Promise<never> {
    // A gateway's probes are counted per requester: one requester's probing never hides another's.
    const admitted = this.#denials.admit(extra ? `${actor.spiffeId} for ${extra.who}` : actor.spiffeId, taskId);
    if (admitted.record) {
      const details = {
        operation,
        reason: why ?? (exists ? 'caller is not the task owner' : 'no such task'),
        requested_task_id: taskId,
        ...(extra?.details ?? {}),
        ...(admitted.suppressed > 0 ? { suppressed_denials: admitted.suppressed } : {}),
      };
      if (exists) await this.apply(taskId, { op: 'event', task_id: taskId, type: 'access.denied', ...this.who(actor, this.now()), details });
      else await this.recordOnActorChain(actor, 'access.denied', details);
    }
    throw new BrokerError('not-found', 'task not found');
  }

  /** The immutable facts of a task: cached, or read once (undefined: no such task), in a span of the call `trace` when traced. */
  async #factsOf(taskId: string, trace?: CallTrace): Promise<TaskFacts | undefined> {
    const cached = this.#facts.get(taskId);
    if (cached) return cached;
    const span = tracingEnabled()
      ? startDatabaseSpan(trace, 'SELECT tasks', { 'db.operation.name': 'SELECT', 'db.collection.name': 'tasks', 'db.query.summary': 'SELECT tasks' })
      : undefined;
    let rows: FactsRow[];
    try {
      rows = await this.#deps.store.read<FactsRow>('tb_task_facts', FACTS_SQL, [taskId]);
    } catch (err) {
      span?.end(err);
      throw err;
    }
    span?.end();
    const [row] = rows;
    return row && this.remember(taskId, row);
  }
}
