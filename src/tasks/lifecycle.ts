/**
 * The task lifecycle: create, poll, issue tokens, complete, cancel, verify, expire.
 *
 * Every change runs in one transaction that locks the task row first, checks owner and state,
 * applies the change, revokes tokens when the task leaves ACTIVE, and appends its audit events.
 * Refusals that must be on record (a stranger's poll, a token refused) commit their audit event
 * and then fail: if the event cannot be stored, the request fails too (fail closed).
 */

import { DenialThrottle } from '../audit/denial-throttle.js';
import { appendAuditEvent, type AuditActor, type AuditEventInput } from '../audit/audit.js';
import { BrokerError } from '../errors.js';
import type { PolicyDecision } from '../policy/policy.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import type { Db, Tx } from '../store/database.js';
import { runTransaction } from '../store/transaction.js';
import { LIVE_STATES, type TaskRow, type TaskState } from '../store/schema.js';
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
}

export type FinalState = Exclude<TaskState, 'PENDING_APPROVAL' | 'ACTIVE'>;

/** Hooks for metrics. They must not throw; they never change an outcome. */
export interface LifecycleObserver {
  /** A task reached a final state, with the tokens revoked with it; called once its transaction committed. */
  taskEnded?(state: FinalState, revokedTokens: number): void;
  /** One audit event was appended, taking `seconds`. */
  auditWritten?(seconds: number): void;
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

function isUniqueViolation(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === '23505';
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

  constructor(private readonly deps: LifecycleDeps) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    this.clock = deps.clock ?? (() => new Date());
    this.denials = deps.denials ?? new DenialThrottle({ now: () => this.clock().getTime() });
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

  /** Records a policy denial in `tx` and returns the refusal to raise after commit. */
  private async denyByPolicy(tx: Tx, actor: Actor, taskId: string | null, operation: string, decision: PolicyDecision & { allowed: false }, details: Record<string, unknown> = {}): Promise<Refusal> {
    await this.audit(tx, actor, {
      taskId,
      type: 'access.denied',
      details: { operation, reason: `policy: ${decision.reason}`, policy_digest: decision.policyDigest, ...details },
    });
    return new Refusal(new BrokerError('permission-denied', `denied by policy: ${decision.reason}`));
  }

  async createTask(actor: Actor, input: TaskSpecInput, idempotencyKey?: string): Promise<{ task: Task; canonicalSpec: string; replayed: boolean }> {
    const spec = validateTaskSpec(input, this.limits);
    const decision = this.decide(actor, { action: spec.action, audience: spec.audience, scopes: spec.scopes, taskTtlSeconds: spec.ttlSeconds });
    if (!decision.allowed) {
      return this.run<never>((tx) => this.denyByPolicy(tx, actor, null, 'CreateTask', decision, { action: spec.action, audience: spec.audience, scopes: spec.scopes }));
    }
    // eslint-disable-next-line no-control-regex
    if (idempotencyKey !== undefined && (idempotencyKey.length === 0 || idempotencyKey.length > 128 || /[\x00-\x1f\x7f]/.test(idempotencyKey))) {
      throw new BrokerError('invalid-argument', 'idempotency_key: 1 to 128 printable characters');
    }
    const canonicalSpec = canonicalSpecJson(spec);
    const hash = taskHashOf(canonicalSpec);
    // A concurrent create with the same key loses the insert race; the retry then replays.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.run(async (tx) => {
          if (idempotencyKey !== undefined) {
            const existing = await tx
              .selectFrom('tasks')
              .selectAll()
              .where('owner_spiffe_id', '=', actor.spiffeId)
              .where('idempotency_key', '=', idempotencyKey)
              .forUpdate()
              .executeTakeFirst();
            if (existing) {
              if (existing.task_hash !== hash) {
                await this.audit(tx, actor, {
                  taskId: existing.task_id,
                  type: 'access.denied',
                  details: { operation: 'CreateTask', reason: 'idempotency key reused with a different spec', task_hash: hash },
                });
                return new Refusal(new BrokerError('already-exists', 'idempotency_key was already used for a task with a different spec'));
              }
              await this.audit(tx, actor, { taskId: existing.task_id, type: 'task.create_replayed', details: { idempotency_key: idempotencyKey } });
              return { task: toTask(existing), canonicalSpec, replayed: true };
            }
          }
          const now = this.clock();
          const row = await tx
            .insertInto('tasks')
            .values({
              task_id: newTaskId(),
              owner_spiffe_id: actor.spiffeId,
              owner_trust_domain: actor.trustDomain,
              spec: JSON.stringify({ action: spec.action, resources: spec.resources, audience: spec.audience, scopes: spec.scopes, params: spec.params }),
              task_hash: hash,
              action: spec.action,
              audience: spec.audience,
              scopes: JSON.stringify(spec.scopes),
              ttl_seconds: spec.ttlSeconds,
              state: decision.requireApproval ? 'PENDING_APPROVAL' : 'ACTIVE',
              policy_rule: decision.rule,
              idempotency_key: idempotencyKey ?? null,
              owner_cert_thumbprint: actor.certThumbprint,
              created_at: now,
              expires_at: new Date(now.getTime() + spec.ttlSeconds * 1000),
            })
            .returningAll()
            .executeTakeFirstOrThrow();
          await this.audit(tx, actor, {
            taskId: row.task_id,
            type: 'task.created',
            occurredAt: now,
            details: {
              task_hash: hash,
              action: spec.action,
              audience: spec.audience,
              resources: spec.resources,
              scopes: spec.scopes,
              ttl_seconds: spec.ttlSeconds,
              expires_at: row.expires_at.toISOString(),
              state: row.state,
              policy_rule: decision.rule,
              policy_digest: decision.policyDigest,
              ...(idempotencyKey !== undefined ? { idempotency_key: idempotencyKey } : {}),
            },
          });
          return { task: toTask(row), canonicalSpec, replayed: false };
        });
      } catch (err) {
        if (attempt === 0 && idempotencyKey !== undefined && isUniqueViolation(err)) continue;
        throw err;
      }
    }
  }

  /**
   * Locks the task for a follow-up by `actor`. A task that does not exist and a task owned by
   * someone else look the same from outside (NOT_FOUND); both are audited.
   */
  private async lockOwnedTask(tx: Tx, actor: Actor, taskId: string, operation: string): Promise<TaskRow | Refusal> {
    if (!isWellFormedTaskId(taskId)) {
      throw new BrokerError('invalid-argument', 'task_id is not a task ID');
    }
    // Only the owner's request locks the row: a stranger's probes do not queue behind (or ahead
    // of) the owner's work on the task. The owner of a task never changes.
    const row = await tx.selectFrom('tasks').selectAll().where('task_id', '=', taskId).where('owner_spiffe_id', '=', actor.spiffeId).forUpdate().executeTakeFirst();
    if (!row) {
      // Bounded evidence: a stranger's repeated probes of one task are counted, not each written.
      const admitted = this.denials.admit(actor.spiffeId, taskId);
      if (!admitted.record) return new Refusal(notFound());
      const exists = await tx.selectFrom('tasks').select('task_id').where('task_id', '=', taskId).executeTakeFirst();
      await this.audit(tx, actor, {
        taskId: exists ? exists.task_id : null,
        type: 'access.denied',
        details: {
          operation,
          reason: exists ? 'caller is not the task owner' : 'no such task',
          requested_task_id: taskId,
          ...(admitted.suppressed > 0 ? { suppressed_denials: admitted.suppressed } : {}),
        },
      });
      return new Refusal(notFound());
    }
    return this.expireIfDue(tx, row, actor.requestId);
  }

  /** A live task past its expiry becomes EXPIRED now, whoever touches it first (or the sweeper). */
  async expireIfDue(tx: Tx, row: TaskRow, requestId: string): Promise<TaskRow> {
    const now = this.clock();
    if (!LIVE_STATES.includes(row.state) || row.expires_at.getTime() > now.getTime()) return row;
    return this.endTask(tx, row, { state: 'EXPIRED', by: this.deps.issuer, reason: 'task ttl elapsed', eventType: 'task.expired', actor: { spiffeId: this.deps.issuer, certThumbprint: null, requestId }, now });
  }

  /** Moves a live task to a terminal state and revokes its tokens, in `tx`. */
  async endTask(
    tx: Tx,
    row: TaskRow,
    change: { state: FinalState; by: string; reason: string; eventType: AuditEventInput['type']; actor: Actor | AuditActor; now?: Date; details?: Record<string, unknown> },
  ): Promise<TaskRow & { revokedTokens?: number }> {
    const now = change.now ?? this.clock();
    const updated = await tx
      .updateTable('tasks')
      .set({ state: change.state, ended_at: now, ended_by: change.by, end_reason: change.reason })
      .where('task_id', '=', row.task_id)
      .returningAll()
      .executeTakeFirstOrThrow();
    const revoked = await tx
      .updateTable('tokens')
      .set({ revoked_at: now, revoke_reason: `task ${change.state.toLowerCase()}` })
      .where('task_id', '=', row.task_id)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    const revokedTokens = Number(revoked.numUpdatedRows);
    if (this.deps.observer?.taskEnded) {
      const ended = this.endedIn.get(tx) ?? [];
      ended.push({ state: change.state, revokedTokens });
      this.endedIn.set(tx, ended);
    }
    await this.audit(tx, change.actor, {
      taskId: row.task_id,
      type: change.eventType,
      occurredAt: now,
      details: { from_state: row.state, to_state: change.state, reason: change.reason, revoked_tokens: revokedTokens, ...change.details },
    });
    return { ...updated, revokedTokens };
  }

  async getTask(actor: Actor, taskId: string): Promise<Task> {
    return this.run(async (tx) => {
      const row = await this.lockOwnedTask(tx, actor, taskId, 'GetTask');
      if (row instanceof Refusal) return row;
      const decision = this.decide(actor, { action: row.action, audience: row.audience, scopes: row.scopes });
      if (!decision.allowed) return this.denyByPolicy(tx, actor, taskId, 'GetTask', decision);
      await this.audit(tx, actor, { taskId, type: 'task.polled', details: { state: row.state, policy_rule: decision.rule } });
      return toTask(row);
    });
  }

  async issueToken(actor: Actor, taskId: string, request: { scopes?: string[]; ttlSeconds?: number } = {}): Promise<IssuedToken> {
    const requestedScopes = request.scopes ?? [];
    if (requestedScopes.length > 0) validateScopes('scopes', requestedScopes);
    if (request.ttlSeconds !== undefined && (!Number.isInteger(request.ttlSeconds) || request.ttlSeconds <= 0)) {
      throw new BrokerError('invalid-argument', 'ttl must be a positive whole number of seconds');
    }
    // Fetched before the transaction: a key refresh reads the database, and embedded PGlite has
    // one connection, which the transaction holds.
    const key = await this.deps.keys.activeKey();
    return this.run(async (tx) => {
      const row = await this.lockOwnedTask(tx, actor, taskId, 'IssueToken');
      if (row instanceof Refusal) return row;
      const refuse = async (kind: 'failed-precondition' | 'permission-denied', message: string, details: Record<string, unknown> = {}) => {
        await this.audit(tx, actor, { taskId, type: 'access.denied', details: { operation: 'IssueToken', reason: message, ...details } });
        return new Refusal(new BrokerError(kind, message));
      };
      if (row.state !== 'ACTIVE') return refuse('failed-precondition', `task is ${row.state}, not ACTIVE: no token can be issued`, { state: row.state });

      const taskScopes = row.scopes;
      const extra = requestedScopes.filter((s) => !taskScopes.includes(s));
      if (extra.length > 0) return refuse('permission-denied', `scopes not granted to the task: ${extra.join(' ')}`, { requested_scopes: requestedScopes });
      const scopes = requestedScopes.length > 0 ? requestedScopes : taskScopes;

      // Policy at request time: a task the policy no longer allows gets no more tokens.
      const decision = this.decide(actor, { action: row.action, audience: row.audience, scopes, taskTtlSeconds: row.ttl_seconds });
      if (!decision.allowed) return this.denyByPolicy(tx, actor, taskId, 'IssueToken', decision, { scopes });
      if (decision.requireApproval && row.approved_by === null) {
        // The rule now asks for approval, and this task never had one.
        return this.denyByPolicy(tx, actor, taskId, 'IssueToken', { allowed: false, reason: `rule "${decision.rule}" now requires approval and the task was not approved`, policyDigest: decision.policyDigest });
      }

      const now = this.clock();
      const nowSec = Math.floor(now.getTime() / 1000);
      const wanted = Math.min(request.ttlSeconds ?? this.limits.defaultTokenTtlSeconds, this.limits.maxTokenTtlSeconds, decision.maxTokenTtlSeconds ?? Infinity);
      const exp = Math.min(nowSec + wanted, Math.floor(row.expires_at.getTime() / 1000));
      if (exp <= nowSec) return refuse('failed-precondition', 'task expires in less than a second: no token can be issued');

      const jti = newTokenId();
      const claims: TaskTokenClaims = {
        iss: this.deps.issuer,
        sub: row.owner_spiffe_id,
        aud: row.audience,
        iat: nowSec,
        nbf: nowSec,
        exp,
        jti,
        task_id: row.task_id,
        task_hash: row.task_hash,
        scope: scopes.join(' '),
        cnf: { 'x5t#S256': actor.certThumbprint },
      };
      const token = await signTaskToken(key, claims);
      const expiresAt = new Date(exp * 1000);
      await tx
        .insertInto('tokens')
        .values({
          jti,
          task_id: row.task_id,
          kid: key.kid,
          subject: claims.sub,
          audience: claims.aud,
          scopes: JSON.stringify(scopes),
          cnf_thumbprint: actor.certThumbprint,
          issued_at: new Date(nowSec * 1000),
          expires_at: expiresAt,
        })
        .execute();
      await this.audit(tx, actor, {
        taskId,
        type: 'token.issued',
        occurredAt: now,
        details: {
          token_id: jti,
          kid: key.kid,
          scopes,
          audience: claims.aud,
          expires_at: expiresAt.toISOString(),
          cnf_x5t_s256: actor.certThumbprint,
          policy_rule: decision.rule,
          policy_digest: decision.policyDigest,
        },
      });
      return { token, tokenId: jti, expiresAt, scopes };
    });
  }

  private async finish(actor: Actor, taskId: string, op: 'CompleteTask' | 'CancelTask', reasonText: string): Promise<{ task: Task; revokedTokens: number }> {
    const reason = truncate(reasonText, 1024);
    return this.run(async (tx) => {
      const row = await this.lockOwnedTask(tx, actor, taskId, op);
      if (row instanceof Refusal) return row;
      const allowed: readonly TaskState[] = op === 'CompleteTask' ? ['ACTIVE'] : LIVE_STATES;
      if (!allowed.includes(row.state)) {
        await this.audit(tx, actor, { taskId, type: 'access.denied', details: { operation: op, reason: `task is ${row.state}`, state: row.state } });
        return new Refusal(new BrokerError('failed-precondition', `task is ${row.state}; only a ${allowed.join(' or ')} task can be ${op === 'CompleteTask' ? 'completed' : 'cancelled'}`));
      }
      const ended = await this.endTask(tx, row, {
        state: op === 'CompleteTask' ? 'COMPLETED' : 'CANCELLED',
        by: actor.spiffeId,
        reason,
        eventType: op === 'CompleteTask' ? 'task.completed' : 'task.cancelled',
        actor,
      });
      return { task: toTask(ended), revokedTokens: ended.revokedTokens ?? 0 };
    });
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
   */
  async verifyToken(actor: Actor, token: string, options: { presenterThumbprint?: string; expectedTaskHash?: string; skipBindingCheck?: boolean } = {}): Promise<VerifyResult> {
    const now = this.clock();
    const check = await checkTaskToken(token, this.deps.keys, { issuer: this.deps.issuer, now });
    const bindingChecked = options.presenterThumbprint !== undefined;
    // Tokens are certificate-bound (RFC 8705): without the presenter's certificate the answer
    // cannot be "valid", unless the resource server opted out on the record.
    const bearerOnly = !bindingChecked && options.skipBindingCheck === true;
    const record = (tx: Tx, taskId: string | null, result: VerifyResult, claims?: Partial<TaskTokenClaims>) =>
      this.audit(tx, actor, {
        taskId,
        type: 'token.verified',
        occurredAt: now,
        details: {
          result: result.reason,
          detail: result.detail,
          token_id: claims?.jti ?? null,
          binding_checked: result.bindingChecked,
          ...(bearerOnly ? { binding_check_skipped: true } : {}),
        },
      });

    if (!check.ok && check.reason !== 'expired') {
      // Not authentic: nothing in it can be trusted, not even which task it names.
      const result: VerifyResult = { valid: false, reason: check.reason, detail: check.detail, bindingChecked };
      await this.transact((tx) => record(tx, null, result));
      return result;
    }
    const claims = check.ok ? check.claims : check.claims;
    const taskId = typeof claims?.task_id === 'string' ? claims.task_id : null;

    return this.transact(async (tx) => {
      // The task row is read under a share lock, so a verification never interleaves with the
      // transaction that ends the task: it sees the task either before or after, never between.
      const task = taskId ? await tx.selectFrom('tasks').selectAll().where('task_id', '=', taskId).forShare().executeTakeFirst() : undefined;
      const chain = task ? task.task_id : null;
      const answer = async (reason: VerifyReason, detail: string): Promise<VerifyResult> => {
        const result: VerifyResult = { valid: reason === 'valid', reason, detail, bindingChecked, ...(reason === 'valid' && check.ok ? { claims: check.claims } : {}) };
        await record(tx, chain, result, claims);
        return result;
      };
      if (!check.ok) return answer('expired', check.detail);
      const c = check.claims;
      if (c.aud !== actor.spiffeId) return answer('audience-mismatch', `the token is for ${c.aud}, not for the caller ${actor.spiffeId}`);
      if (!task) return answer('revoked', 'the token names a task that is not on record');
      const row = await tx.selectFrom('tokens').select(['revoked_at', 'revoke_reason', 'task_id']).where('jti', '=', c.jti).executeTakeFirst();
      if (!row || row.task_id !== task.task_id) return answer('revoked', 'the token is not on record');
      if (row.revoked_at) return answer('revoked', `the token was revoked (${row.revoke_reason ?? 'no reason recorded'})`);
      if (task.state !== 'ACTIVE' || task.expires_at.getTime() <= now.getTime()) {
        return answer('task-not-active', `the task is ${task.state === 'ACTIVE' ? 'past its expiry' : task.state}`);
      }
      if (c.task_hash !== task.task_hash || c.sub !== task.owner_spiffe_id) return answer('task-hash-mismatch', 'the token does not match its task on record');
      if (options.expectedTaskHash !== undefined && options.expectedTaskHash !== c.task_hash) {
        return answer('task-hash-mismatch', 'the task hash differs from the expected one');
      }
      if (options.presenterThumbprint !== undefined && options.presenterThumbprint !== c.cnf['x5t#S256']) {
        return answer('binding-mismatch', "the presenter's certificate is not the one the token is bound to (cnf x5t#S256)");
      }
      if (!bindingChecked && !bearerOnly) {
        return answer('presenter-required', "no presenter certificate was given: the token is bound to a certificate (cnf x5t#S256); pass the presenter's certificate, or set skip_binding_check to verify it as a bearer token");
      }
      return answer('valid', bindingChecked ? 'valid and bound to the presenter' : 'valid as a bearer token (binding check skipped at the caller\'s request)');
    });
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

