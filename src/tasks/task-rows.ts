/**
 * Every SQL statement the task domain runs on task rows outside the write batcher: lock one task
 * (expiring it first when it is due), lock the live tasks of matching workloads, end a task
 * (tb_end_task: state, token revocation and audit event in one statement), approve, list a page,
 * sweep due tasks, prune old token rows. Row ↔ Task conversion lives here too.
 */
import { sql } from 'kysely';
import type { AuditActor, AuditEventType } from '../audit/audit.js';
import { isLive, LIVE_STATES, type Actor, type FinalState, type Task, type TaskSpec, type TaskState } from '../model/task.js';
import type { Db } from '../store/database.js';
import type { PrincipalJson, TaskRow } from '../store/schema.js';
import { storableJson } from '../store/write-batcher.js';
import { auditActor, type TaskObserver, type UnitOfWork, type Work } from './unit-of-work.js';

/** The trace id each unit of work's transaction has set for tb_append_event (migrations/0007), so it is set once. */
const tracedTransactions = new WeakMap<object, string>();

/**
 * Makes every event the database appends in this transaction from now on carry `traceId`
 * (details.trace_id): tb_end_task appends events of its own (a tree's descendants), which the
 * broker does not write itself. Transaction-local (set_config(..., true)).
 */
async function traceTransaction(work: Work, traceId: string): Promise<void> {
  if (tracedTransactions.get(work.tx) === traceId) return;
  await sql`select set_config('taskbroker.trace_id', ${traceId}, true)`.execute(work.tx);
  tracedTransactions.set(work.tx, traceId);
}

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
    parentTaskId: row.parent_task_id ?? null,
    rootTaskId: row.root_task_id ?? null,
    depth: row.depth ?? 0,
    delegators: row.delegators ?? [],
    principal: row.principal ?? null,
    approver: row.approver ?? null,
    gateway: row.gateway ?? null,
    hasResult: row.result_failed !== null && row.result_failed !== undefined,
    resultFailed: row.result_failed === true,
  };
}

/** A task row as the database functions return it (to_jsonb: timestamps as text). */
export function taskRowFromJson(j: Record<string, unknown>): TaskRow {
  const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
  return {
    ...(j as unknown as TaskRow),
    created_at: new Date(j.created_at as string),
    expires_at: new Date(j.expires_at as string),
    ended_at: date(j.ended_at),
    approved_at: date(j.approved_at),
  };
}

export interface TaskEnding {
  state: FinalState;
  /** Recorded as ended_by. */
  by: string;
  reason: string;
  eventType: AuditEventType;
  actor: Actor | AuditActor;
  details?: Record<string, unknown>;
}

export interface ListFilter {
  ownerRegex?: string;
  audienceRegex?: string;
  state?: TaskState;
  createdAfter?: Date;
  createdBefore?: Date;
  /** Keyset position: rows strictly below (created_at, task_id) of the last row of the previous page. */
  below?: { createdAt: Date; taskId: string };
}

export interface TaskRowsDeps {
  db: Db;
  /** Recorded as the actor and ended_by of the broker's own actions (expiry). */
  issuer: string;
  observer?: TaskObserver;
}

export class TaskRows {
  readonly #deps: TaskRowsDeps;

  constructor(deps: TaskRowsDeps) {
    this.#deps = deps;
  }

  /** Locks any task for an admin action, expiring it first if it is due (in the call's trace `traceId`); undefined: no such task. */
  async lock(work: Work, taskId: string, requestId: string, traceId?: string): Promise<TaskRow | undefined> {
    // A tree's lock order: its root first, then the task (migrations/0005).
    const root = await work.tx.selectFrom('tasks').select('root_task_id').where('task_id', '=', taskId).executeTakeFirst();
    if (root?.root_task_id) await work.tx.selectFrom('tasks').select('task_id').where('task_id', '=', root.root_task_id).forUpdate().execute();
    const row = await work.tx.selectFrom('tasks').selectAll().where('task_id', '=', taskId).forUpdate().executeTakeFirst();
    return row && this.expireIfDue(work, row, requestId, traceId);
  }

  /** A live task past its expiry becomes EXPIRED now, whoever touches it first (or the sweeper). */
  async expireIfDue(work: Work, row: TaskRow, requestId: string, traceId?: string): Promise<TaskRow> {
    if (!isLive(row.state) || row.expires_at.getTime() > work.now.getTime()) return row;
    return this.end(work, row, this.#expiry(requestId, traceId));
  }

  /**
   * The live tasks of one trust domain whose owner matches `regex`, in task_id order: locked for the
   * kill switch (two overlapping ones cannot deadlock), or read without a lock for its dry run.
   */
  liveOwnedBy(work: Work, trustDomain: string, regex: string, { lock }: { lock: boolean }): Promise<TaskRow[]> {
    const q = work.tx
      .selectFrom('tasks')
      .selectAll()
      .where('state', 'in', LIVE_STATES)
      .where('owner_trust_domain', '=', trustDomain)
      .where(sql<boolean>`owner_spiffe_id ~ ${regex}`)
      .orderBy('task_id');
    return (lock ? q.forUpdate() : q).execute();
  }

  /**
   * What ending `taskIds` would reach, read in one statement: the live tasks delegated below them
   * at any depth (the subtree tb_end_task ends with a task, by parent_task_id), and the unrevoked
   * tokens of both (`live`: not yet expired at `now`).
   */
  async endingReach(work: Work, taskIds: readonly string[], now: Date): Promise<{ descendants: number; unrevokedTokens: number; liveTokens: number }> {
    if (taskIds.length === 0) return { descendants: 0, unrevokedTokens: 0, liveTokens: 0 };
    const { rows } = await sql<{ descendants: string | number; unrevoked: string | number; live: string | number }>`
      with recursive selected as (select value as task_id from jsonb_array_elements_text(${JSON.stringify(taskIds)}::jsonb)),
      below as (
        select c.task_id, c.state from tasks c join selected s on c.parent_task_id = s.task_id
        union
        select c.task_id, c.state from tasks c join below b on c.parent_task_id = b.task_id
      ),
      descendants as (select task_id from below where state in (${sql.join(LIVE_STATES)}) except select task_id from selected),
      ending as (select task_id from selected union select task_id from descendants)
      select (select count(*) from descendants) as descendants,
             count(t.task_id) as unrevoked,
             count(t.task_id) filter (where t.expires_at > ${now}) as live
      from ending e left join tokens t on t.task_id = e.task_id and t.revoked_at is null`.execute(work.tx);
    const [r] = rows;
    return { descendants: Number(r?.descendants ?? 0), unrevokedTokens: Number(r?.unrevoked ?? 0), liveTokens: Number(r?.live ?? 0) };
  }

  /** Moves a live task to a final state, revokes its tokens and records the event (tb_end_task). */
  async end(work: Work, row: TaskRow, change: TaskEnding): Promise<TaskRow & { revokedTokens: number }> {
    const a = auditActor(change.actor);
    if (a.traceId) await traceTransaction(work, a.traceId);
    const details = change.details ? storableJson(JSON.stringify(change.details)) : null;
    const { rows } = await sql<{
      r: { task: Record<string, unknown>; revoked: number };
    }>`select tb_end_task(t, ${change.state}, ${change.by}, ${change.reason}, ${change.eventType}, ${a.spiffeId}, ${a.certThumbprint}, ${a.requestId}, ${work.now}, ${details}::jsonb) as r from tasks t where t.task_id = ${row.task_id}`.execute(
      work.tx,
    );
    const ended = rows[0]!.r;
    const observer = this.#deps.observer;
    if (observer?.taskEnded) work.afterCommit(() => observer.taskEnded!(change.state, ended.revoked));
    return { ...taskRowFromJson(ended.task), revokedTokens: ended.revoked };
  }

  /** PENDING_APPROVAL → ACTIVE, with the approver (the caller checked the state on the locked row). */
  approve(work: Work, taskId: string, approver: string, comment: string, approverPrincipal: PrincipalJson | null = null): Promise<TaskRow> {
    return work.tx
      .updateTable('tasks')
      .set({
        state: 'ACTIVE',
        approved_by: approver,
        approved_at: work.now,
        approval_comment: comment || null,
        approver: approverPrincipal ? JSON.stringify(approverPrincipal) : null,
      })
      .where('task_id', '=', taskId)
      .returningAll()
      .executeTakeFirstOrThrow();
  }

  /** One page of tasks, newest first; tasks created while paging sort above the first page, so pages never repeat or skip one. */
  list(filter: ListFilter, limit: number): Promise<TaskRow[]> {
    let q = this.#deps.db.selectFrom('tasks').selectAll();
    if (filter.ownerRegex) q = q.where(sql<boolean>`owner_spiffe_id ~ ${filter.ownerRegex}`);
    if (filter.audienceRegex) q = q.where(sql<boolean>`audience ~ ${filter.audienceRegex}`);
    if (filter.state) q = q.where('state', '=', filter.state);
    if (filter.createdAfter) q = q.where('created_at', '>=', filter.createdAfter);
    if (filter.createdBefore) q = q.where('created_at', '<', filter.createdBefore);
    const below = filter.below;
    if (below)
      q = q.where((eb) => eb.or([eb('created_at', '<', below.createdAt), eb.and([eb('created_at', '=', below.createdAt), eb('task_id', '<', below.taskId)])]));
    return q.orderBy('created_at', 'desc').orderBy('task_id', 'desc').limit(limit).execute();
  }

  /**
   * A page of one party's tasks, newest first: the owner's own (no gateway given), or those a
   * gateway serves for one requester (its owner's SPIFFE ID, or the principal it was created for).
   */
  listOwn(
    who: { owner: string; gateway?: undefined } | { gateway: string; owner: string } | { gateway: string; principal: { iss: string; sub: string } },
    below: { createdAt: Date; taskId: string } | undefined,
    limit: number,
  ): Promise<TaskRow[]> {
    let q = this.#deps.db.selectFrom('tasks').selectAll();
    if (who.gateway === undefined) {
      q = q.where('owner_spiffe_id', '=', who.owner);
    } else if ('owner' in who) {
      // An X509 requester's tasks: owned by it (never by the gateway), with no principal.
      q = q
        .where('gateway', '=', who.gateway)
        .where('owner_spiffe_id', '=', who.owner)
        .where('owner_spiffe_id', '<>', who.gateway)
        .where('principal', 'is', null);
    } else {
      q = q
        .where('gateway', '=', who.gateway)
        .where('owner_spiffe_id', '=', who.gateway)
        .where(sql<boolean>`principal->>'iss' = ${who.principal.iss} and principal->>'sub' = ${who.principal.sub}`);
    }
    if (below)
      q = q.where((eb) => eb.or([eb('created_at', '<', below.createdAt), eb.and([eb('created_at', '=', below.createdAt), eb('task_id', '<', below.taskId)])]));
    return q.orderBy('created_at', 'desc').orderBy('task_id', 'desc').limit(limit).execute();
  }

  /** Deletes stored results whose retention ended before `now` (their tasks and events stay). */
  async purgeResults(now: Date): Promise<number> {
    const result = await this.#deps.db.deleteFrom('task_results').where('retain_until', '<', now).executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  async exists(taskId: string): Promise<boolean> {
    return (await this.#deps.db.selectFrom('tasks').select('task_id').where('task_id', '=', taskId).executeTakeFirst()) !== undefined;
  }

  /** Raw access to a task without owner checks, for tools and tests (not exposed over the API). */
  async load(taskId: string): Promise<Task | undefined> {
    const row = await this.#deps.db.selectFrom('tasks').selectAll().where('task_id', '=', taskId).executeTakeFirst();
    return row ? toTask(row) : undefined;
  }

  /** Expires due tasks in batches; safe to run in several replicas at once (SKIP LOCKED). */
  async sweepExpired(units: UnitOfWork, options: { batchSize?: number; requestId: string }): Promise<number> {
    const batchSize = options.batchSize ?? 100;
    let total = 0;
    for (;;) {
      const n = await units.run(async (work) => {
        const due = await work.tx
          .selectFrom('tasks')
          .selectAll()
          .where('state', 'in', LIVE_STATES)
          .where('expires_at', '<=', work.now)
          .orderBy('expires_at')
          .limit(batchSize)
          .forUpdate()
          .skipLocked()
          .execute();
        for (const row of due) await this.end(work, row, this.#expiry(options.requestId));
        return due.length;
      });
      total += n;
      if (n < batchSize) return total;
    }
  }

  /**
   * Deletes token rows that expired before `cutoff` (their audit events stay), and with them the
   * revocation log entries whose tokens had all expired by then and the report ids received
   * before then (a report retried after that is recorded again).
   */
  async pruneTokens(cutoff: Date): Promise<number> {
    const db = this.#deps.db;
    const result = await db.deleteFrom('tokens').where('expires_at', '<', cutoff).executeTakeFirst();
    await db.deleteFrom('revocations').where('tokens_expire_by', '<', cutoff).execute();
    await db.deleteFrom('token_use_reports').where('received_at', '<', cutoff).execute();
    return Number(result.numDeletedRows);
  }

  #expiry(requestId: string, traceId?: string): TaskEnding {
    const issuer = this.#deps.issuer;
    return {
      state: 'EXPIRED',
      by: issuer,
      reason: 'task ttl elapsed',
      eventType: 'task.expired',
      actor: { spiffeId: issuer, certThumbprint: null, requestId, ...(traceId ? { traceId } : {}) },
    };
  }
}
