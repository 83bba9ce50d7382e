/**
 * The admin plane's domain: revoke a task or every task of matching workloads, list tasks,
 * read a task's audit trail, approve tasks, rotate the signing key. Only callers the policy names
 * as admins get in; every other attempt is refused and audited. Every admin action is an audit
 * event with the admin's identity, in the transaction of the change. Changes go through the unit
 * of work and the task rows, the same ones the sweeper uses.
 */
import { verifyTaskTrail, type AuditEvent, type ChainCheck } from '../audit/audit.js';
import { BrokerError, clipped } from '../errors.js';
import { isLive, type Actor, type Task, type TaskState } from '../model/task.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import type { Db } from '../store/database.js';
import type { TaskRow } from '../store/schema.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_RECORDED_INPUT, MAX_TRAIL_PAGE } from './limits.js';
import { decodeCursor, encodeCursor, filterDigest, type ListTasksFilter } from './list-cursor.js';
import { toTask, type TaskRows } from './task-rows.js';
import type { UnitOfWork, Work } from './unit-of-work.js';
import { freeText, pageSizeArgument, selectorArgument, stateFilterArgument, taskIdArgument } from './validation.js';

export interface TaskAdminDeps {
  db: Db;
  units: UnitOfWork;
  rows: TaskRows;
  keys: SigningKeyRing;
  policy: PolicySource;
}

/** A ListTasks filter as the caller sent it: checked only once the caller is known to be an admin. */
export type ListTasksRequest = Omit<ListTasksFilter, 'state'> & {
  /** A state name (ACTIVE or TASK_STATE_ACTIVE); empty or TASK_STATE_UNSPECIFIED: any. */
  state?: string;
};

/** A caller's value recorded in a refusal's audit event: bounded. */
const bounded = (value: string) => clipped(value, MAX_RECORDED_INPUT);

const notFound = () => new BrokerError('not-found', 'task not found');

export class TaskAdmin {
  readonly #deps: TaskAdminDeps;

  constructor(deps: TaskAdminDeps) {
    this.#deps = deps;
  }

  async revokeTask(actor: Actor, taskId: string, reason: string): Promise<{ task: Task; revokedTokens: number }> {
    return this.#onLockedTask(actor, 'RevokeTask', taskId, { reason }, async (work, row, entry) => {
      if (!isLive(row.state)) work.refuse(new BrokerError('failed-precondition', `task is already ${row.state}`));
      const ended = await this.#deps.rows.end(work, row, {
        state: 'REVOKED',
        by: actor.spiffeId,
        reason: reason || 'revoked by an admin',
        eventType: 'task.revoked',
        actor,
        details: { admin_entry: entry },
      });
      return { task: toTask(ended), revokedTokens: ended.revokedTokens };
    });
  }

  async revokeWorkload(actor: Actor, selector: string, reason: string): Promise<{ taskIds: string[]; revokedTokens: number }> {
    // Who asks is checked before what is asked: a stranger's input is never parsed, only recorded (bounded).
    const entry = await this.#authorize(actor, 'RevokeWorkload', { selector: bounded(selector) });
    if (!selector) throw new BrokerError('invalid-argument', 'selector is required: an exact SPIFFE ID or a pattern');
    const { matcher, regex } = selectorArgument('selector', selector);
    freeText(reason, 'reason');
    const { units, rows } = this.#deps;
    return units.run(async (work) => {
      let revokedTokens = 0;
      const taskIds: string[] = [];
      for (const row of await rows.lockLiveOwnedBy(work, matcher.trustDomain, regex)) {
        if (!matcher.matches(SpiffeId.parse(row.owner_spiffe_id))) continue; // the regex and the matcher must agree; the matcher decides
        const ended = await rows.end(work, row, {
          state: 'REVOKED',
          by: actor.spiffeId,
          reason: reason || `workload revoked (${selector})`,
          eventType: 'task.revoked',
          actor,
          details: { selector, admin_entry: entry },
        });
        revokedTokens += ended.revokedTokens;
        taskIds.push(row.task_id);
      }
      await work.audit(actor, {
        taskId: null,
        type: 'admin.workload_revoked',
        details: { selector, reason, revoked_tasks: taskIds.length, revoked_tokens: revokedTokens, task_ids: taskIds.slice(0, 1000) },
      });
      return { taskIds, revokedTokens };
    });
  }

  async listTasks(actor: Actor, request: ListTasksRequest, page: { pageSize?: number; pageToken?: string }): Promise<{ tasks: Task[]; nextPageToken: string }> {
    await this.#authorize(actor, 'ListTasks');
    const state: TaskState | undefined = stateFilterArgument(request.state);
    const filter: ListTasksFilter = { ...request, state };
    if (filter.state === undefined) delete filter.state;
    const pageSize = pageSizeArgument(page.pageSize, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const ownerRegex = filter.owner ? selectorArgument('owner', filter.owner).regex : undefined;
    const audienceRegex = filter.audience ? selectorArgument('audience', filter.audience).regex : undefined;
    const digest = filterDigest(filter);
    const below = page.pageToken ? decodeCursor(page.pageToken, digest) : undefined;
    const found = await this.#deps.rows.list(
      { ownerRegex, audienceRegex, state, createdAfter: filter.createdAfter, createdBefore: filter.createdBefore, below },
      pageSize + 1,
    );
    const more = found.length > pageSize;
    const pageRows = more ? found.slice(0, pageSize) : found;
    const last = pageRows.at(-1);
    await this.#deps.units.record(actor, { taskId: null, type: 'admin.tasks_listed', details: { filter: { ...filter }, returned: pageRows.length } });
    return {
      tasks: pageRows.map(toTask),
      nextPageToken: more && last ? encodeCursor({ createdAt: last.created_at, taskId: last.task_id }, digest) : '',
    };
  }

  async auditTrail(
    actor: Actor,
    taskId: string,
    page: { afterSeq?: number; pageSize?: number } = {},
  ): Promise<{ events: AuditEvent[]; check: ChainCheck; nextAfterSeq: number }> {
    await this.#authorize(actor, 'GetAuditTrail', { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    const pageSize = pageSizeArgument(page.pageSize, MAX_TRAIL_PAGE, MAX_TRAIL_PAGE);
    const afterSeq = page.afterSeq ?? 0;
    const result = await verifyTaskTrail(this.#deps.db, taskId);
    if (result.events === 0 && result.trail.length === 0 && !(await this.#deps.rows.exists(taskId))) throw notFound();
    // The read is on the record of the admin who made it (not on the task's chain being read).
    await this.#deps.units.record(actor, { taskId: null, type: 'admin.audit_read', details: { task_id: taskId, chain_ok: result.ok, events: result.events } });
    const { trail, ...check } = result;
    const rest = trail.filter((e) => e.seq > afterSeq);
    const events = rest.slice(0, pageSize);
    return { events, check, nextAfterSeq: rest.length > pageSize ? (events.at(-1)?.seq ?? 0) : 0 };
  }

  async approveTask(actor: Actor, taskId: string, comment: string): Promise<Task> {
    return this.#onLockedTask(actor, 'ApproveTask', taskId, { comment }, async (work, row, entry) => {
      if (row.owner_spiffe_id === actor.spiffeId) {
        await work.audit(actor, { taskId, type: 'access.denied', details: { operation: 'ApproveTask', reason: 'an approver cannot approve their own task' } });
        work.refuse(new BrokerError('permission-denied', 'an approver cannot approve their own task'));
      }
      // A due task was expired by lock(), so a PENDING_APPROVAL row here is still within its ttl.
      if (row.state !== 'PENDING_APPROVAL') work.refuse(new BrokerError('failed-precondition', `task is ${row.state}, not PENDING_APPROVAL`));
      const updated = await this.#deps.rows.approve(work, taskId, actor.spiffeId, comment);
      await work.audit(actor, {
        taskId,
        type: 'task.approved',
        details: { approver: actor.spiffeId, comment, owner: row.owner_spiffe_id, admin_entry: entry, from_state: 'PENDING_APPROVAL', to_state: 'ACTIVE' },
      });
      return toTask(updated);
    });
  }

  async rotateSigningKey(actor: Actor): Promise<{ kid: string; retiredKid: string | undefined }> {
    const entry = await this.#authorize(actor, 'RotateSigningKey');
    const { units, keys } = this.#deps;
    return keys.rotate(async (tx, rotation) => {
      await units.append(tx, actor, {
        taskId: null,
        type: 'admin.key_rotated',
        details: { kid: rotation.kid, retired_kid: rotation.retiredKid ?? null, admin_entry: entry },
      });
    });
  }

  /**
   * An admin action on one task: the caller must be an admin (checked first, on the record), then
   * the task ID and the free text are checked, then `fn` runs on the locked task (expired first
   * if it is due) in one unit of work; a missing task is NOT_FOUND.
   */
  async #onLockedTask<T>(
    actor: Actor,
    operation: string,
    taskId: string,
    text: Record<string, string>,
    fn: (work: Work, row: TaskRow, entry: string) => Promise<T>,
  ): Promise<T> {
    const entry = await this.#authorize(actor, operation, { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    for (const [field, value] of Object.entries(text)) freeText(value, field);
    return this.#deps.units.run(async (work) => {
      const row = (await this.#deps.rows.lock(work, taskId, actor.requestId)) ?? work.refuse(notFound());
      return fn(work, row, entry);
    });
  }

  /** Admins only: anyone else is refused with PERMISSION_DENIED, on the record. */
  async #authorize(actor: Actor, operation: string, details: Record<string, unknown> = {}): Promise<string> {
    const policy = this.#deps.policy.current();
    const decision = policy
      ? policy.adminDecision(SpiffeId.parse(actor.spiffeId))
      : { allowed: false as const, reason: 'no policy is loaded', policyDigest: '' };
    if (decision.allowed) return decision.entry;
    return this.#deps.units.refuse(
      actor,
      {
        taskId: null,
        type: 'access.denied',
        details: { operation, reason: `not an admin: ${decision.reason}`, policy_digest: decision.policyDigest, ...details },
      },
      new BrokerError('permission-denied', `${operation} is for admins only`),
    );
  }
}
