/**
 * The admin plane's domain: revoke a task or every task of matching workloads, list tasks,
 * read a task's audit trail, approve tasks, rotate the signing key. Only callers the policy names
 * as admins get in; every other attempt is refused and audited. Every admin action is an audit
 * event with the admin's identity, in the transaction of the change.
 */
import { sql } from 'kysely';
import { createHash } from 'node:crypto';
import { verifyTaskTrail, type AuditEvent, type ChainCheck } from '../audit/audit.js';
import { BrokerError, clipped, quoted } from '../errors.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import { parseSpiffeIdPattern, patternToPostgresRegex, SpiffeIdPatternError } from '../spiffe/pattern.js';
import type { Db, Tx } from '../store/database.js';
import { LIVE_STATES, TASK_STATES, type TaskState } from '../model/task.js';
import type { TaskRow } from '../store/schema.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import { isWellFormedTaskId } from './ids.js';
import { Refusal, toTask, type Actor, type Task, type TaskLifecycle } from './lifecycle.js';

export interface TaskAdminDeps {
  db: Db;
  lifecycle: TaskLifecycle;
  keys: SigningKeyRing;
  policy: PolicySource;
  clock?: () => Date;
}

export interface ListTasksFilter {
  owner?: string;
  state?: TaskState;
  audience?: string;
  createdAfter?: Date;
  createdBefore?: Date;
}

/** A ListTasks filter as the caller sent it: checked only once the caller is known to be an admin. */
export type ListTasksRequest = Omit<ListTasksFilter, 'state'> & {
  /** A state name (ACTIVE or TASK_STATE_ACTIVE); empty or TASK_STATE_UNSPECIFIED: any. */
  state?: string;
};

function stateFilter(value: string | undefined): TaskState | undefined {
  if (value === undefined || value === '' || value === 'TASK_STATE_UNSPECIFIED') return undefined;
  const state = value.replace(/^TASK_STATE_/, '') as TaskState;
  if (!TASK_STATES.includes(state)) throw new BrokerError('invalid-argument', `state: unknown task state ${quoted(value)}`);
  return state;
}

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
/** Events per GetAuditTrail page: keeps a response far below gRPC's 4 MiB default, however long the trail. */
export const MAX_TRAIL_PAGE = 1000;
const MAX_TEXT = 1024;

interface Cursor {
  v: 1;
  /** created_at of the last task of the page, ISO */
  c: string;
  /** task_id of the last task of the page */
  t: string;
  /** digest of the filter the cursor belongs to */
  f: string;
}

function filterDigest(filter: ListTasksFilter): string {
  const canonical = JSON.stringify([filter.owner ?? '', filter.state ?? '', filter.audience ?? '', filter.createdAfter?.toISOString() ?? '', filter.createdBefore?.toISOString() ?? '']);
  return createHash('sha256').update(canonical).digest('base64url').slice(0, 16);
}

function encodeCursor(c: Cursor): string {
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

function decodeCursor(token: string, digest: string): Cursor {
  const bad = () => new BrokerError('invalid-argument', 'page_token is not a page token of this listing (filters must stay the same between pages)');
  let c: Partial<Cursor>;
  try {
    c = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as Partial<Cursor>;
  } catch {
    throw bad();
  }
  if (c.v !== 1 || typeof c.c !== 'string' || typeof c.t !== 'string' || c.f !== digest || Number.isNaN(Date.parse(c.c))) throw bad();
  return c as Cursor;
}

/** Validates a selector (exact ID or pattern) for owners/audiences; INVALID_ARGUMENT naming the field. */
function selectorRegex(field: string, selector: string): string {
  try {
    parseSpiffeIdPattern(selector);
    return patternToPostgresRegex(selector);
  } catch (err) {
    if (err instanceof SpiffeIdPatternError) throw new BrokerError('invalid-argument', `${field}: ${err.message}`);
    throw err;
  }
}

/** A caller's value recorded in a refusal's audit event: at most 256 characters of it. */
const bounded = (value: string) => clipped(value, 256);

function text(value: string, field: string): string {
  if (value.length > MAX_TEXT) throw new BrokerError('invalid-argument', `${field}: at most ${MAX_TEXT} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(value)) throw new BrokerError('invalid-argument', `${field}: control characters are not allowed`);
  return value;
}

export class TaskAdmin {
  constructor(private readonly deps: TaskAdminDeps) {}

  private get lifecycle(): TaskLifecycle {
    return this.deps.lifecycle;
  }

  /** Admins only: anyone else is refused with PERMISSION_DENIED, on the record. */
  private async authorize(actor: Actor, operation: string, details: Record<string, unknown> = {}): Promise<string> {
    const policy = this.deps.policy.current();
    const decision = policy
      ? policy.adminDecision(SpiffeId.parse(actor.spiffeId))
      : { allowed: false as const, reason: 'no policy is loaded', policyDigest: '' };
    if (decision.allowed) return decision.entry;
    await this.lifecycle.run<never>(async (tx) => {
      await this.lifecycle.audit(tx, actor, {
        taskId: null,
        type: 'access.denied',
        details: { operation, reason: `not an admin: ${decision.reason}`, policy_digest: decision.policyDigest, ...details },
      });
      return new Refusal(new BrokerError('permission-denied', `${operation} is for admins only`));
    });
    throw new Error('unreachable');
  }

  private checkTaskId(taskId: string): void {
    if (!isWellFormedTaskId(taskId)) throw new BrokerError('invalid-argument', 'task_id is not a task ID');
  }

  /** Locks any task for an admin action (admins see every task), expiring it first if it is due. */
  private async lockTask(tx: Tx, actor: Actor, taskId: string): Promise<TaskRow | Refusal> {
    const locked = await tx.selectFrom('tasks').selectAll().where('task_id', '=', taskId).forUpdate().executeTakeFirst();
    if (!locked) return new Refusal(new BrokerError('not-found', 'task not found'));
    return this.lifecycle.expireIfDue(tx, locked, actor.requestId);
  }

  async revokeTask(actor: Actor, taskId: string, reason: string): Promise<{ task: Task; revokedTokens: number }> {
    const entry = await this.authorize(actor, 'RevokeTask', { task_id: bounded(taskId) });
    this.checkTaskId(taskId);
    text(reason, 'reason');
    return this.lifecycle.run(async (tx) => {
      const row = await this.lockTask(tx, actor, taskId);
      if (row instanceof Refusal) return row;
      if (!LIVE_STATES.includes(row.state)) {
        return new Refusal(new BrokerError('failed-precondition', `task is already ${row.state}`));
      }
      const ended = await this.lifecycle.endTask(tx, row, {
        state: 'REVOKED',
        by: actor.spiffeId,
        reason: reason || 'revoked by an admin',
        eventType: 'task.revoked',
        actor,
        details: { admin_entry: entry },
      });
      return { task: toTask(ended), revokedTokens: ended.revokedTokens ?? 0 };
    });
  }

  async revokeWorkload(actor: Actor, selector: string, reason: string): Promise<{ taskIds: string[]; revokedTokens: number }> {
    // Who asks is checked before what is asked: a stranger's input is never parsed, only recorded (bounded).
    const entry = await this.authorize(actor, 'RevokeWorkload', { selector: bounded(selector) });
    if (!selector) throw new BrokerError('invalid-argument', 'selector is required: an exact SPIFFE ID or a pattern');
    const regex = selectorRegex('selector', selector);
    const matcher = parseSpiffeIdPattern(selector);
    text(reason, 'reason');
    return this.lifecycle.run(async (tx) => {
      // Locked in task_id order, so two overlapping kill switches cannot deadlock.
      const rows = await tx
        .selectFrom('tasks')
        .selectAll()
        .where('state', 'in', LIVE_STATES)
        .where('owner_trust_domain', '=', matcher.trustDomain)
        .where(sql<boolean>`owner_spiffe_id ~ ${regex}`)
        .orderBy('task_id')
        .forUpdate()
        .execute();
      let revokedTokens = 0;
      const taskIds: string[] = [];
      for (const row of rows) {
        if (!matcher.matches(SpiffeId.parse(row.owner_spiffe_id))) continue; // the regex and the matcher must agree; the matcher decides
        const ended = await this.lifecycle.endTask(tx, row, {
          state: 'REVOKED',
          by: actor.spiffeId,
          reason: reason || `workload revoked (${selector})`,
          eventType: 'task.revoked',
          actor,
          details: { selector, admin_entry: entry },
        });
        revokedTokens += ended.revokedTokens ?? 0;
        taskIds.push(row.task_id);
      }
      await this.lifecycle.audit(tx, actor, {
        taskId: null,
        type: 'admin.workload_revoked',
        details: { selector, reason, revoked_tasks: taskIds.length, revoked_tokens: revokedTokens, task_ids: taskIds.slice(0, 1000) },
      });
      return { taskIds, revokedTokens };
    });
  }

  async listTasks(actor: Actor, request: ListTasksRequest, page: { pageSize?: number; pageToken?: string }): Promise<{ tasks: Task[]; nextPageToken: string }> {
    await this.authorize(actor, 'ListTasks');
    const filter: ListTasksFilter = { ...request, state: stateFilter(request.state) };
    if (filter.state === undefined) delete filter.state;
    const pageSize = page.pageSize === undefined || page.pageSize === 0 ? DEFAULT_PAGE_SIZE : page.pageSize;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE_SIZE) throw new BrokerError('invalid-argument', `page_size: 1 to ${MAX_PAGE_SIZE}`);
    const ownerRegex = filter.owner ? selectorRegex('owner', filter.owner) : undefined;
    const audienceRegex = filter.audience ? selectorRegex('audience', filter.audience) : undefined;
    const digest = filterDigest(filter);
    const cursor = page.pageToken ? decodeCursor(page.pageToken, digest) : undefined;

    let q = this.deps.db.selectFrom('tasks').selectAll();
    if (ownerRegex) q = q.where(sql<boolean>`owner_spiffe_id ~ ${ownerRegex}`);
    if (audienceRegex) q = q.where(sql<boolean>`audience ~ ${audienceRegex}`);
    if (filter.state) q = q.where('state', '=', filter.state);
    if (filter.createdAfter) q = q.where('created_at', '>=', filter.createdAfter);
    if (filter.createdBefore) q = q.where('created_at', '<', filter.createdBefore);
    // Keyset pagination, newest first: (created_at, task_id) strictly below the cursor. Tasks
    // created while paging sort above the first page, so pages never repeat or skip a task.
    if (cursor) {
      const at = new Date(cursor.c);
      q = q.where((eb) => eb.or([eb('created_at', '<', at), eb.and([eb('created_at', '=', at), eb('task_id', '<', cursor.t)])]));
    }
    const rows = await q.orderBy('created_at', 'desc').orderBy('task_id', 'desc').limit(pageSize + 1).execute();
    const more = rows.length > pageSize;
    const pageRows = more ? rows.slice(0, pageSize) : rows;
    const last = pageRows.at(-1);
    await this.lifecycle.run(async (tx) => {
      await this.lifecycle.audit(tx, actor, { taskId: null, type: 'admin.tasks_listed', details: { filter: { ...filter }, returned: pageRows.length } });
      return undefined;
    });
    return {
      tasks: pageRows.map(toTask),
      nextPageToken: more && last ? encodeCursor({ v: 1, c: last.created_at.toISOString(), t: last.task_id, f: digest }) : '',
    };
  }

  async auditTrail(actor: Actor, taskId: string, page: { afterSeq?: number; pageSize?: number } = {}): Promise<{ events: AuditEvent[]; check: ChainCheck; nextAfterSeq: number }> {
    await this.authorize(actor, 'GetAuditTrail', { task_id: bounded(taskId) });
    this.checkTaskId(taskId);
    const pageSize = page.pageSize === undefined || page.pageSize === 0 ? MAX_TRAIL_PAGE : page.pageSize;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_TRAIL_PAGE) throw new BrokerError('invalid-argument', `page_size: 1 to ${MAX_TRAIL_PAGE}`);
    const afterSeq = page.afterSeq ?? 0;
    const result = await verifyTaskTrail(this.deps.db, taskId);
    if (result.events === 0 && result.trail.length === 0) {
      const exists = await this.deps.db.selectFrom('tasks').select('task_id').where('task_id', '=', taskId).executeTakeFirst();
      if (!exists) throw new BrokerError('not-found', 'task not found');
    }
    // The read is on the record of the admin who made it (not on the task's chain being read).
    await this.lifecycle.run(async (tx) => {
      await this.lifecycle.audit(tx, actor, { taskId: null, type: 'admin.audit_read', details: { task_id: taskId, chain_ok: result.ok, events: result.events } });
      return undefined;
    });
    const { trail, ...check } = result;
    const rest = trail.filter((e) => e.seq > afterSeq);
    const events = rest.slice(0, pageSize);
    return { events, check, nextAfterSeq: rest.length > pageSize ? (events.at(-1)?.seq ?? 0) : 0 };
  }

  async approveTask(actor: Actor, taskId: string, comment: string): Promise<Task> {
    const entry = await this.authorize(actor, 'ApproveTask', { task_id: bounded(taskId) });
    this.checkTaskId(taskId);
    text(comment, 'comment');
    return this.lifecycle.run(async (tx) => {
      const row = await this.lockTask(tx, actor, taskId);
      if (row instanceof Refusal) return row;
      if (row.owner_spiffe_id === actor.spiffeId) {
        await this.lifecycle.audit(tx, actor, { taskId, type: 'access.denied', details: { operation: 'ApproveTask', reason: 'an approver cannot approve their own task' } });
        return new Refusal(new BrokerError('permission-denied', 'an approver cannot approve their own task'));
      }
      if (row.state !== 'PENDING_APPROVAL') return new Refusal(new BrokerError('failed-precondition', `task is ${row.state}, not PENDING_APPROVAL`));
      // A due task was expired by lockTask, so a PENDING_APPROVAL row here is still within its ttl.
      const now = this.deps.clock?.() ?? new Date();
      const updated = await tx
        .updateTable('tasks')
        .set({ state: 'ACTIVE', approved_by: actor.spiffeId, approved_at: now, approval_comment: comment || null })
        .where('task_id', '=', taskId)
        .returningAll()
        .executeTakeFirstOrThrow();
      await this.lifecycle.audit(tx, actor, {
        taskId,
        type: 'task.approved',
        occurredAt: now,
        details: { approver: actor.spiffeId, comment, owner: row.owner_spiffe_id, admin_entry: entry, from_state: 'PENDING_APPROVAL', to_state: 'ACTIVE' },
      });
      return toTask(updated);
    });
  }

  async rotateSigningKey(actor: Actor): Promise<{ kid: string; retiredKid: string | undefined }> {
    const entry = await this.authorize(actor, 'RotateSigningKey');
    return this.deps.keys.rotate(async (tx, rotation) => {
      await this.lifecycle.audit(tx, actor, {
        taskId: null,
        type: 'admin.key_rotated',
        details: { kid: rotation.kid, retired_kid: rotation.retiredKid ?? null, admin_entry: entry },
      });
    });
  }
}

