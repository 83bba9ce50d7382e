/**
 * The admin plane's domain: revoke a task or every task of matching workloads (or only see what
 * that would revoke: a dry run), list tasks, read one task with its history, read a task's audit
 * trail (or a whole delegation tree's), read a delegation tree, approve tasks, rotate the signing key. Only callers the policy names as admins get in; every other
 * attempt is refused and audited. Every admin action is an audit event with the admin's
 * identity, in the transaction of the change. Changes go through the unit of work and the task
 * rows, the same ones the sweeper uses.
 */
import { createHash } from 'node:crypto';
import { verifyTaskTrail, type AuditEvent, type ChainCheck } from '../audit/audit.js';
import { BrokerError, clipped } from '../errors.js';
import { isLive, TASK_STATES, type Actor, type Task, type TaskState } from '../model/task.js';
import type { PolicySource } from '../policy/policy-source.js';
import { SpiffeId } from '../spiffe/id.js';
import type { Db } from '../store/database.js';
import type { PrincipalJson, TaskRow } from '../store/schema.js';
import { SubjectTokenVerifier } from '../policy/subject-tokens.js';
import type { Rotation, SigningKeyInfo, SigningKeyRing } from '../tokens/keyring.js';
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_RECORDED_INPUT, MAX_TRAIL_PAGE } from './limits.js';
import { decodeCursor, encodeCursor, filterDigest, type ListTasksFilter } from './list-cursor.js';
import { toTask, type TaskRows } from './task-rows.js';
import type { UnitOfWork, Work } from './unit-of-work.js';
import { freeText, invalid, pageSizeArgument, selectorArgument, stateFilterArgument, subjectTokenArgument, taskIdArgument } from './validation.js';

export interface TaskAdminDeps {
  db: Db;
  units: UnitOfWork;
  rows: TaskRows;
  keys: SigningKeyRing;
  policy: PolicySource;
  /** Verifies approvers' subject tokens (default: one of its own). */
  subjects?: SubjectTokenVerifier;
}

/** A ListTasks filter as the caller sent it: checked only once the caller is known to be an admin. */
export type ListTasksRequest = Omit<ListTasksFilter, 'state'> & {
  /** A state name (ACTIVE or TASK_STATE_ACTIVE); empty or TASK_STATE_UNSPECIFIED: any. */
  state?: string;
};

/** A caller's value recorded in a refusal's audit event: bounded. */
const bounded = (value: string) => clipped(value, MAX_RECORDED_INPUT);

const notFound = () => new BrokerError('not-found', 'task not found');

/** GetTaskTree and the tree trail read at most this many tasks; a bigger tree is refused (FAILED_PRECONDITION). */
export const MAX_TREE_TASKS = 10_000;

/** How many task chains a tree trail reads and checks at a time. */
const TREE_CHAIN_READS = 8;

/** One task's chain check in a tree trail. */
export interface TaskChainCheck {
  taskId: string;
  check: ChainCheck;
}

/** A page of a delegation tree's trail: every task's events in write order, and every chain's check. */
export interface TreeTrailPage {
  rootTaskId: string;
  events: AuditEvent[];
  /** All of the tree's chains: ok only if each is; events is their total; the first broken task is named. */
  check: ChainCheck;
  /** Per task, in tree order (the root first, then depth first). */
  chains: TaskChainCheck[];
  /** Empty on the last page. */
  nextPageToken: string;
}

/**
 * The tasks of a tree in depth-first order: the root, then each child (by created_at, then
 * task_id) followed by its own subtree. Rows whose parent is not among `rows` (none, as parents
 * are foreign keys and the tree is read in one statement) come last rather than being dropped.
 */
export function depthFirst(rootTaskId: string, rows: readonly TaskRow[]): TaskRow[] {
  const children = new Map<string, TaskRow[]>();
  let root: TaskRow | undefined;
  for (const row of rows) {
    if (row.task_id === rootTaskId) root = row;
    else {
      const parent = row.parent_task_id ?? '';
      const list = children.get(parent);
      if (list) list.push(row);
      else children.set(parent, [row]);
    }
  }
  if (!root) return [];
  const byAge = (a: TaskRow, b: TaskRow) => a.created_at.getTime() - b.created_at.getTime() || (a.task_id < b.task_id ? -1 : a.task_id > b.task_id ? 1 : 0);
  for (const list of children.values()) list.sort(byAge);
  const ordered: TaskRow[] = [];
  const seen = new Set<string>();
  // Iterative: a deep chain must not overflow the stack.
  const stack: TaskRow[] = [root];
  while (stack.length > 0) {
    const row = stack.pop()!;
    if (seen.has(row.task_id)) continue;
    seen.add(row.task_id);
    ordered.push(row);
    const below = children.get(row.task_id) ?? [];
    for (let i = below.length - 1; i >= 0; i--) stack.push(below[i]!);
  }
  if (ordered.length < rows.length) {
    const rest = rows.filter((r) => !seen.has(r.task_id)).sort((a, b) => a.depth - b.depth || byAge(a, b));
    ordered.push(...rest);
  }
  return ordered;
}

/** One state change of a task, read from an event of its audit trail. */
export interface TaskStateChange {
  /** The state the task entered. */
  state: TaskState;
  at: Date;
  /** Who: the caller's SPIFFE ID (the broker's own for an expiry). */
  by: string;
  byCertThumbprint: string | null;
  /** The audit event: task.created, task.approved, task.completed, … */
  event: string;
  /** The reason, outcome or approval comment recorded with it ('' when none). */
  reason: string;
  seq: number;
}

/** One task as GetTask answers it: the task, its history, its tokens, its chain check. */
export interface TaskDetails {
  task: Task;
  history: TaskStateChange[];
  /** token.issued events in its trail. */
  tokensIssued: number;
  /** Its tokens neither revoked nor expired. */
  liveTokens: number;
  /** task.delegated events in its trail. */
  delegatedTasks: number;
  ownerCertThumbprint: string;
  check: ChainCheck;
}

/** What RevokeWorkload did, or with dryRun would do. */
export interface WorkloadRevocation {
  taskIds: string[];
  /** Tokens revoked (dry run: that would be), of the selected tasks and of the tasks delegated below them. */
  revokedTokens: number;
  dryRun: boolean;
  /** Dry run only: of revokedTokens, those not expired yet. */
  liveTokens: number;
  /** Dry run only: live tasks delegated below the selected ones (and not selected themselves) that would end with them. */
  descendantTasks: number;
}

const ENDING_STATES: Record<string, TaskState> = {
  'task.completed': 'COMPLETED',
  'task.cancelled': 'CANCELLED',
  'task.revoked': 'REVOKED',
  'task.expired': 'EXPIRED',
};

const stateOf = (value: unknown): TaskState | undefined => ((TASK_STATES as readonly unknown[]).includes(value) ? (value as TaskState) : undefined);
const textOf = (value: unknown): string => (typeof value === 'string' ? value : '');

/**
 * The state changes of a task, oldest first, from its trail: its creation (in the state it was
 * created in; a delegated task names its parent), its approval (with the comment) and its end
 * (with the reason or outcome). Every other event (polls, tokens, delegations) leaves the state as it is.
 */
function stateHistory(trail: readonly AuditEvent[]): TaskStateChange[] {
  const changes: TaskStateChange[] = [];
  for (const e of trail) {
    const d = e.details;
    let state: TaskState | undefined;
    let reason = '';
    if (e.type === 'task.created') {
      state = stateOf(d.state) ?? 'ACTIVE';
      const parent = textOf(d.parent_task_id);
      if (parent) reason = `delegated from ${parent}`;
    } else if (e.type === 'task.approved') {
      state = stateOf(d.to_state) ?? 'ACTIVE';
      reason = textOf(d.comment);
    } else if (ENDING_STATES[e.type]) {
      state = stateOf(d.to_state) ?? ENDING_STATES[e.type];
      reason = textOf(d.reason);
    }
    if (!state) continue;
    changes.push({ state, at: e.occurredAt, by: e.actorSpiffeId, byCertThumbprint: e.actorCertThumbprint, event: e.type, reason, seq: e.seq });
  }
  return changes;
}

const count = (value: string | number | bigint | undefined): number => Number(value ?? 0);

/** Tree trail page tokens: the event_id of the last event of a page and a digest of the tree's root. */
interface TreeCursor {
  v: 1;
  /** event_id of the last event of the page */
  e: number;
  /** digest of the root task ID */
  r: string;
}

const rootDigest = (rootTaskId: string) => createHash('sha256').update(`tree:${rootTaskId}`).digest('base64url').slice(0, 16);

export function encodeTreeCursor(lastEventId: number, rootTaskId: string): string {
  const c: TreeCursor = { v: 1, e: lastEventId, r: rootDigest(rootTaskId) };
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

export function decodeTreeCursor(token: string, rootTaskId: string): number {
  const bad = () => invalid("page_token is not a page token of this tree's audit trail");
  let c: Partial<TreeCursor> | null;
  try {
    c = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as Partial<TreeCursor> | null;
  } catch {
    throw bad();
  }
  if (typeof c !== 'object' || c === null) throw bad();
  if (c.v !== 1 || typeof c.e !== 'number' || !Number.isSafeInteger(c.e) || c.e < 0 || c.r !== rootDigest(rootTaskId)) throw bad();
  return c.e;
}

export class TaskAdmin {
  readonly #deps: TaskAdminDeps;

  readonly #subjects: SubjectTokenVerifier;

  constructor(deps: TaskAdminDeps) {
    this.#deps = deps;
    this.#subjects = deps.subjects ?? new SubjectTokenVerifier();
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

  /**
   * The kill switch: every live task of the workloads `selector` matches is revoked, with its
   * tokens and the tasks delegated below it, in one transaction. With `dryRun` nothing changes:
   * the answer is what a real call would revoke now, and the read is on the admin's record as
   * admin.workload_revoke_dry_run.
   */
  async revokeWorkload(actor: Actor, selector: string, reason: string, options: { dryRun?: boolean } = {}): Promise<WorkloadRevocation> {
    const dryRun = options.dryRun === true;
    // Who asks is checked before what is asked: a stranger's input is never parsed, only recorded (bounded).
    const entry = await this.#authorize(actor, 'RevokeWorkload', { selector: bounded(selector), ...(dryRun ? { dry_run: true } : {}) });
    if (!selector) throw new BrokerError('invalid-argument', 'selector is required: an exact SPIFFE ID or a pattern');
    const { matcher, regex } = selectorArgument('selector', selector);
    freeText(reason, 'reason');
    const { units, rows } = this.#deps;
    if (dryRun) return this.#revokeWorkloadDryRun(actor, selector, reason, matcher, regex);
    return units.run(async (work) => {
      let revokedTokens = 0;
      const taskIds: string[] = [];
      for (const row of await rows.liveOwnedBy(work, matcher.trustDomain, regex, { lock: true })) {
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
      return { taskIds, revokedTokens, dryRun: false, liveTokens: 0, descendantTasks: 0 };
    });
  }

  /**
   * What revokeWorkload would revoke, read without a lock and changed in nothing: the live tasks
   * the selector matches (as the real call selects them), the live tasks delegated below them (a
   * task's end ends its subtree), and the unrevoked tokens of both.
   */
  async #revokeWorkloadDryRun(
    actor: Actor,
    selector: string,
    reason: string,
    matcher: ReturnType<typeof selectorArgument>['matcher'],
    regex: string,
  ): Promise<WorkloadRevocation> {
    return this.#deps.units.run(async (work) => {
      const candidates = await this.#deps.rows.liveOwnedBy(work, matcher.trustDomain, regex, { lock: false });
      const taskIds = candidates.filter((row) => matcher.matches(SpiffeId.parse(row.owner_spiffe_id))).map((row) => row.task_id);
      const reach = await this.#deps.rows.endingReach(work, taskIds, work.now);
      const { unrevokedTokens: revokedTokens, liveTokens, descendants: descendantTasks } = reach;
      await work.audit(actor, {
        taskId: null,
        type: 'admin.workload_revoke_dry_run',
        details: {
          selector,
          reason,
          dry_run: true,
          revoked_tasks: taskIds.length,
          revoked_tokens: revokedTokens,
          live_tokens: liveTokens,
          descendant_tasks: descendantTasks,
          task_ids: taskIds.slice(0, 1000),
        },
      });
      return { taskIds, revokedTokens, dryRun: true, liveTokens, descendantTasks };
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
    page: { afterSeq?: number; pageSize?: number; pageToken?: string } = {},
  ): Promise<{ events: AuditEvent[]; check: ChainCheck; nextAfterSeq: number }> {
    await this.#authorize(actor, 'GetAuditTrail', { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    if (page.pageToken) throw invalid("page_token is for a tree's trail (tree: true); one task's trail pages by after_seq");
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

  /**
   * One task with its history (the state changes in its trail), its token counts and the check of
   * its chain. The task is locked only to expire it if it is due (a short transaction of its own),
   * so a task past its expiry is EXPIRED first, as any other admin action finds it; the trail is
   * read and checked without a lock, as audit-trail does, so the owner's calls never wait on it.
   * The read is on the admin's record (admin.task_read).
   */
  async getTask(actor: Actor, taskId: string): Promise<TaskDetails> {
    await this.#authorize(actor, 'GetTask', { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    const { units, rows, db } = this.#deps;
    const { row, now } = await units.run(async (work) => ({
      row: (await rows.lock(work, taskId, actor.requestId, actor.trace?.traceId)) ?? work.refuse(notFound()),
      now: work.now,
    }));
    const { trail, ...check } = await verifyTaskTrail(db, taskId);
    const tokens = await db
      .selectFrom('tokens')
      .select((eb) => eb.fn.countAll<string | number>().as('live'))
      .where('task_id', '=', taskId)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    // The read is on the record of the admin who made it (not on the task's chain being read).
    await units.record(actor, {
      taskId: null,
      type: 'admin.task_read',
      details: { task_id: taskId, state: row.state, chain_ok: check.ok, events: check.events },
    });
    return {
      task: toTask(row),
      history: stateHistory(trail),
      tokensIssued: trail.filter((e) => e.type === 'token.issued').length,
      liveTokens: count(tokens?.live),
      delegatedTasks: trail.filter((e) => e.type === 'task.delegated').length,
      ownerCertThumbprint: row.owner_cert_thumbprint,
      check,
    };
  }

  /**
   * The delegation tree `taskId` belongs to: its root, then every task delegated below it, depth
   * first (children by created_at, then task_id). Read in one statement (the root row and the
   * tasks_by_root index), at most MAX_TREE_TASKS tasks. The read is on the admin's record.
   */
  async taskTree(actor: Actor, taskId: string): Promise<{ rootTaskId: string; tasks: Task[] }> {
    await this.#authorize(actor, 'GetTaskTree', { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    const { rootTaskId, rows } = await this.#treeRows(taskId);
    await this.#deps.units.record(actor, { taskId: null, type: 'admin.tree_read', details: { task_id: taskId, root_task_id: rootTaskId, tasks: rows.length } });
    return { rootTaskId, tasks: rows.map(toTask) };
  }

  /**
   * The audit trail of the delegation tree `taskId` belongs to: the events of every task of the
   * tree in the order they were written (event_id), a page at a time, with the check of every
   * task's whole chain. A page token is the last event_id of its page, bound to the tree's root;
   * a task delegated between pages is part of the next page (its events were written later).
   */
  async treeAuditTrail(actor: Actor, taskId: string, page: { afterSeq?: number; pageSize?: number; pageToken?: string } = {}): Promise<TreeTrailPage> {
    await this.#authorize(actor, 'GetAuditTrail', { task_id: bounded(taskId), tree: true });
    taskIdArgument(taskId);
    // Pages of a tree go by page_token (write order across chains), not by one chain's sequence numbers.
    if (page.afterSeq) throw invalid("after_seq is for one task's trail; with tree, pages go by page_token");
    const pageSize = pageSizeArgument(page.pageSize, MAX_TRAIL_PAGE, MAX_TRAIL_PAGE);
    const { rootTaskId, rows } = await this.#treeRows(taskId);
    const afterEventId = page.pageToken ? decodeTreeCursor(page.pageToken, rootTaskId) : 0;

    const results = new Array<Awaited<ReturnType<typeof verifyTaskTrail>>>(rows.length);
    let next = 0;
    const reader = async () => {
      for (let i = next++; i < rows.length; i = next++) results[i] = await verifyTaskTrail(this.#deps.db, rows[i]!.task_id);
    };
    await Promise.all(Array.from({ length: Math.min(TREE_CHAIN_READS, rows.length) }, reader));

    const chains: TaskChainCheck[] = [];
    const all: AuditEvent[] = [];
    for (const [i, result] of results.entries()) {
      const { trail, ...check } = result;
      chains.push({ taskId: rows[i]!.task_id, check });
      for (const e of trail) if (e.eventId > afterEventId) all.push(e);
    }
    all.sort((a, b) => a.eventId - b.eventId);
    const events = all.slice(0, pageSize);
    const broken = chains.find((c) => !c.check.ok);
    const total = chains.reduce((n, c) => n + c.check.events, 0);
    const check: ChainCheck = broken
      ? {
          ok: false,
          chainId: broken.taskId,
          events: total,
          brokenAt: broken.check.brokenAt ?? 0,
          problem: `task ${broken.taskId}: ${broken.check.problem ?? 'its chain is broken'}`,
        }
      : { ok: true, chainId: rootTaskId, events: total };
    // The read is on the record of the admin who made it (not on the chains being read).
    await this.#deps.units.record(actor, {
      taskId: null,
      type: 'admin.audit_read',
      details: { task_id: taskId, tree: true, root_task_id: rootTaskId, tasks: rows.length, chain_ok: check.ok, events: total },
    });
    const last = events.at(-1);
    return { rootTaskId, events, check, chains, nextPageToken: all.length > pageSize && last ? encodeTreeCursor(last.eventId, rootTaskId) : '' };
  }

  /**
   * PENDING_APPROVAL → ACTIVE. When the task's rule names its approvers by claim
   * (require_approval.approvers), the approval also needs `approverToken`: a subject token of a
   * person with those claims, who is not the task's principal. That person is recorded as the
   * task's approver, apart from the admin who called.
   */
  async approveTask(actor: Actor, taskId: string, comment: string, approverToken?: string): Promise<Task> {
    const prepare = async () => {
      subjectTokenArgument(approverToken);
      if (!approverToken) return undefined;
      const policy = this.#deps.policy.current();
      const verified = policy ? await this.#subjects.verify(approverToken, policy.subjectIssuers) : undefined;
      if (!verified?.ok) {
        const reason = `approver_token refused: ${verified ? verified.reason : 'no policy is loaded'}`;
        // On the admin's record: the task may not exist, and the token says nothing about it.
        await this.#deps.units.record(actor, { taskId: null, type: 'access.denied', details: { operation: 'ApproveTask', task_id: taskId, reason } });
        throw new BrokerError(verified ? verified.kind : 'permission-denied', reason);
      }
      return verified;
    };
    return this.#onLockedTask(
      actor,
      'ApproveTask',
      taskId,
      { comment },
      async (work, row, entry, approver) => {
        const refuse = async (reason: string) => {
          await work.audit(actor, { taskId, type: 'access.denied', details: { operation: 'ApproveTask', reason } });
          return work.refuse(new BrokerError('permission-denied', reason));
        };
        if (row.owner_spiffe_id === actor.spiffeId) await refuse('an approver cannot approve their own task');
        // A due task was expired by lock(), so a PENDING_APPROVAL row here is still within its ttl.
        if (row.state !== 'PENDING_APPROVAL') work.refuse(new BrokerError('failed-precondition', `task is ${row.state}, not PENDING_APPROVAL`));
        const rule = row.policy_rule ? this.#deps.policy.current()?.rules.find((r) => r.name === row.policy_rule) : undefined;
        if (rule?.approvers && !approver)
          await refuse(`rule "${rule.name}" names its approvers: approver_token (the approving person's subject token) is required`);
        let approverPrincipal: PrincipalJson | null = null;
        if (approver) {
          const p = approver.principal;
          if (row.principal && row.principal.iss === p.iss && row.principal.sub === p.sub) await refuse("the task's principal cannot approve their own task");
          if (rule?.approvers) {
            const decision = this.#deps.policy.current()!.approverDecision(rule.name, { iss: p.iss, sub: p.sub, claims: approver.claims });
            if (!decision.allowed) await refuse(`policy: ${decision.reason}`);
          }
          approverPrincipal = { iss: p.iss, sub: p.sub, ...(p.sid !== undefined ? { sid: p.sid } : {}) };
        }
        const updated = await this.#deps.rows.approve(work, taskId, actor.spiffeId, comment, approverPrincipal);
        await work.audit(actor, {
          taskId,
          type: 'task.approved',
          details: {
            approver: actor.spiffeId,
            comment,
            owner: row.owner_spiffe_id,
            admin_entry: entry,
            from_state: 'PENDING_APPROVAL',
            to_state: 'ACTIVE',
            ...(approverPrincipal ? { approver_principal: approverPrincipal } : {}),
          },
        });
        return toTask(updated);
      },
      prepare,
    );
  }

  /**
   * A new signing key: NEXT (published now, signing from its activates_at) or, with `immediate`
   * (a compromised key: no pre-publication), ACTIVE at once. Refused (FAILED_PRECONDITION) while
   * another NEXT key is pending, unless immediate. Audited in the rotation's transaction.
   */
  async rotateSigningKey(actor: Actor, request: { immediate?: boolean; reason?: string } = {}): Promise<Rotation> {
    const immediate = request.immediate === true;
    const reason = request.reason ?? '';
    const entry = await this.#authorize(actor, 'RotateSigningKey', { immediate, reason: bounded(reason) });
    freeText(reason, 'reason');
    const { units, keys } = this.#deps;
    return keys.rotate({ immediate }, async (tx, rotation) => {
      await units.append(tx, actor, {
        taskId: null,
        type: 'admin.key_rotated',
        details: {
          kid: rotation.kid,
          state: rotation.state,
          activates_at: rotation.activatesAt.toISOString(),
          retired_kid: rotation.retiredKid ?? null,
          retired_key_published_until: rotation.retiredKeyPublishedUntil?.toISOString() ?? null,
          immediate,
          ...(immediate ? { pre_publication_skipped: true, discarded_kid: rotation.discardedKid ?? null } : {}),
          reason,
          admin_entry: entry,
        },
      });
    });
  }

  /** The signing keys in the JWKS (with `all`, also those no longer published), newest first. The read is on the admin's record. */
  async listSigningKeys(
    actor: Actor,
    request: { all?: boolean } = {},
  ): Promise<{ keys: SigningKeyInfo[]; prePublicationMs: number; retiredPublicationMs: number }> {
    const all = request.all === true;
    await this.#authorize(actor, 'ListSigningKeys');
    const { keys, units } = this.#deps;
    const listed = await keys.list({ all });
    await units.record(actor, {
      taskId: null,
      type: 'admin.signing_keys_listed',
      details: { all, returned: listed.length, kids: listed.map((k) => k.kid).slice(0, 100) },
    });
    return { keys: listed, prePublicationMs: keys.prePublicationMs, retiredPublicationMs: keys.retiredPublicationMs };
  }

  /**
   * An admin action on one task: the caller must be an admin (checked first, on the record), then
   * the task ID and the free text are checked, then `fn` runs on the locked task (expired first
   * if it is due) in one unit of work; a missing task is NOT_FOUND.
   */
  async #onLockedTask<T, P = undefined>(
    actor: Actor,
    operation: string,
    taskId: string,
    text: Record<string, string>,
    fn: (work: Work, row: TaskRow, entry: string, prepared: P) => Promise<T>,
    /** Work done once the caller is known to be an admin and before the transaction (e.g. verifying a token). */
    prepare?: () => Promise<P>,
  ): Promise<T> {
    const entry = await this.#authorize(actor, operation, { task_id: bounded(taskId) });
    taskIdArgument(taskId);
    for (const [field, value] of Object.entries(text)) freeText(value, field);
    const prepared = (prepare ? await prepare() : undefined) as P;
    return this.#deps.units.run(async (work) => {
      const row = (await this.#deps.rows.lock(work, taskId, actor.requestId, actor.trace?.traceId)) ?? work.refuse(notFound());
      return fn(work, row, entry, prepared);
    });
  }

  /**
   * The tasks of the tree `taskId` belongs to, depth first, read in one statement: the root row
   * and the rows that name it as their root (tasks_by_root). NOT_FOUND for an unknown task;
   * FAILED_PRECONDITION for a tree of more than MAX_TREE_TASKS tasks.
   */
  async #treeRows(taskId: string): Promise<{ rootTaskId: string; rows: TaskRow[] }> {
    const { db } = this.#deps;
    const task = await db.selectFrom('tasks').select(['task_id', 'root_task_id']).where('task_id', '=', taskId).executeTakeFirst();
    if (!task) throw notFound();
    const rootTaskId = task.root_task_id ?? task.task_id;
    const rows = await db
      .selectFrom('tasks')
      .selectAll()
      .where((eb) => eb.or([eb('task_id', '=', rootTaskId), eb('root_task_id', '=', rootTaskId)]))
      .orderBy('depth')
      .orderBy('task_id')
      .limit(MAX_TREE_TASKS + 1)
      .execute();
    if (rows.length > MAX_TREE_TASKS) {
      throw new BrokerError('failed-precondition', `the delegation tree of ${rootTaskId} has more than ${MAX_TREE_TASKS} tasks: too many to return at once`);
    }
    return { rootTaskId, rows: depthFirst(rootTaskId, rows) };
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
