/**
 * The text output of the admin commands: tasks as table rows or `key: value` blocks, delegation
 * trees as indented trees, audit trails as tables; `wide` (-o wide) adds columns and fields.
 * (--json output needs none of this: it is the response's proto3 JSON.)
 */
import type { ChainCheck__Output } from '../../gen/taskbroker/v1/ChainCheck.js';
import type { GetAuditTrailResponse__Output } from '../../gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { GetTaskTreeResponse__Output } from '../../gen/taskbroker/v1/GetTaskTreeResponse.js';
import type { ListSigningKeysResponse__Output } from '../../gen/taskbroker/v1/ListSigningKeysResponse.js';
import type { RotateSigningKeyResponse__Output } from '../../gen/taskbroker/v1/RotateSigningKeyResponse.js';
import type { Task__Output } from '../../gen/taskbroker/v1/Task.js';
import type { TaskBrokerAdminGetTaskResponse__Output } from '../../gen/taskbroker/v1/TaskBrokerAdminGetTaskResponse.js';
import type { Timestamp__Output } from '../../gen/google/protobuf/Timestamp.js';
import { parseTaskState } from '../../protocol/enums.js';
import { structToJson } from '../../protocol/struct.js';
import { fromTimestamp } from '../../protocol/timestamps.js';
import { readableDuration } from '../../tokens/key-publication.js';
import { formatFields, formatTable } from '../table.js';
import type { Out, TextFormat } from './run.js';

function isoTime(ts: Timestamp__Output | null | undefined): string | null {
  const date = fromTimestamp(ts);
  return date ? date.toISOString() : null;
}

/** ACTIVE for TASK_STATE_ACTIVE; a name this build does not know is shown as it came. */
export function shortState(state: string): string {
  return parseTaskState(state) ?? state;
}

const dash = (text: string | null | undefined): string => (text ? text : '-');

export const plural = (n: number, one: string, many: string): string => `${n} ${n === 1 ? one : many}`;

/** A hash shown in a table: its first 12 characters. */
const hashPrefix = (hash: string): string => (hash.length > 12 ? `${hash.slice(0, 12)}…` : dash(hash));

const scopesOf = (t: Task__Output): string => (t.spec?.scopes.length ? t.spec.scopes.join(' ') : '-');

/** Who created the task: its gateway, else its delegator (the owner of its parent), else its owner. */
function createdBy(t: Task__Output): string {
  return t.gateway || t.delegators[0] || t.ownerSpiffeId;
}

const TASK_COLUMNS = ['TASK ID', 'STATE', 'OWNER', 'AUDIENCE', 'ACTION', 'CREATED', 'EXPIRES'] as const;
const WIDE_TASK_COLUMNS = ['TASK ID', 'STATE', 'OWNER', 'AUDIENCE', 'ACTION', 'SCOPES', 'CREATED BY', 'RULE', 'HASH', 'CREATED', 'EXPIRES'] as const;

function taskRow(t: Task__Output): string[] {
  return [t.taskId, shortState(t.state), t.ownerSpiffeId, dash(t.spec?.audience), dash(t.spec?.action), dash(isoTime(t.createdAt)), dash(isoTime(t.expiresAt))];
}

function wideTaskRow(t: Task__Output): string[] {
  return [
    t.taskId,
    shortState(t.state),
    t.ownerSpiffeId,
    dash(t.spec?.audience),
    dash(t.spec?.action),
    scopesOf(t),
    createdBy(t),
    dash(t.policyRule),
    hashPrefix(t.taskHash),
    dash(isoTime(t.createdAt)),
    dash(isoTime(t.expiresAt)),
  ];
}

export function printTaskTable(tasks: Task__Output[], out: Out, format: TextFormat): void {
  const lines = format === 'wide' ? formatTable(WIDE_TASK_COLUMNS, tasks.map(wideTaskRow)) : formatTable(TASK_COLUMNS, tasks.map(taskRow));
  for (const line of lines) out(line);
}

const principalText = (p: Task__Output['principal']): string | undefined =>
  p ? `${p.subject} at ${p.issuer}${p.sessionId ? ` (session ${p.sessionId})` : ''}` : undefined;

/** A task's `key: value` pairs (undefined: left out); `wide` adds its place in a delegation tree and who is behind it. */
function taskFieldPairs(t: Task__Output, format: TextFormat): Array<[string, string | undefined]> {
  const approved = t.approvedBy !== '' || t.approvedAt !== null;
  const ended = t.endedAt !== null || t.endedBy !== '';
  const wide = format === 'wide';
  return [
    ['task id', t.taskId],
    ['state', shortState(t.state)],
    ['owner', t.ownerSpiffeId],
    ['gateway', t.gateway ? t.gateway : undefined],
    ['result', t.hasResult ? (t.resultFailed ? 'stored (failed)' : 'stored') : undefined],
    ['action', dash(t.spec?.action)],
    ['audience', dash(t.spec?.audience)],
    ['resources', t.spec?.resources.length ? t.spec.resources.join(', ') : '-'],
    ['scopes', t.spec?.scopes.length ? t.spec.scopes.join(' ') : '-'],
    ['params', JSON.stringify(structToJson(t.spec?.params))],
    ['task hash', t.taskHash],
    ['policy rule', dash(t.policyRule)],
    ['created', dash(isoTime(t.createdAt))],
    ['expires', dash(isoTime(t.expiresAt))],
    ['approved by', approved ? dash(t.approvedBy) : undefined],
    ['approved at', approved ? dash(isoTime(t.approvedAt)) : undefined],
    ['approval comment', approved ? dash(t.approvalComment) : undefined],
    ['ended', ended ? dash(isoTime(t.endedAt)) : undefined],
    ['ended by', ended ? dash(t.endedBy) : undefined],
    ['end reason', ended ? dash(t.endReason) : undefined],
    ['created by', wide ? createdBy(t) : undefined],
    ['parent task', wide ? dash(t.parentTaskId) : undefined],
    ['root task', wide ? dash(t.rootTaskId) : undefined],
    ['depth', wide ? String(t.depth) : undefined],
    ['delegators', wide ? (t.delegators.length ? t.delegators.join(', ') : '-') : undefined],
    ['principal', wide ? dash(principalText(t.principal)) : undefined],
    ['approver', wide && t.approver ? principalText(t.approver) : undefined],
  ];
}

/** A task as a `key: value` block, after a blank line; nothing when the response had none. */
export function printTaskFields(t: Task__Output | null, out: Out, format: TextFormat): void {
  if (!t) return;
  out('');
  for (const line of formatFields(taskFieldPairs(t, format))) out(line);
}

/** A chain check in one line. */
function chainText(chain: ChainCheck__Output | null): string {
  if (!chain) return 'BROKEN: the broker returned no chain check';
  return chain.ok ? `verified, ${plural(chain.events, 'event', 'events')}` : `BROKEN at event #${chain.brokenAt}: ${chain.problem || 'no detail given'}`;
}

/**
 * get-task: a headline, the task's fields with its token counts and chain check, then its history
 * (the state changes from its audit trail) as a table; `wide` adds certificate thumbprints.
 */
export function printTaskDetails(res: TaskBrokerAdminGetTaskResponse__Output, asked: string, out: Out, format: TextFormat): void {
  const t = res.task;
  if (!t) {
    out(`task ${asked}: the broker returned no task`);
    return;
  }
  const wide = format === 'wide';
  out(`task ${t.taskId}: ${shortState(t.state)}`);
  out('');
  const pairs = [
    ...taskFieldPairs(t, format),
    ['owner cert', wide ? dash(res.ownerCertThumbprint) : undefined],
    ['tokens', `${res.tokensIssued} issued, ${res.liveTokens} live`],
    ['delegated tasks', res.delegatedTasks > 0 || wide ? String(res.delegatedTasks) : undefined],
    ['audit chain', chainText(res.chain)],
  ] satisfies Array<[string, string | undefined]>;
  for (const line of formatFields(pairs)) out(line);
  out('');
  out(`history: ${plural(res.history.length, 'state change', 'state changes')}`);
  const rows = res.history.map((h) => [
    `#${h.seq}`,
    dash(isoTime(h.at)),
    shortState(h.state),
    h.event,
    dash(h.by),
    ...(wide ? [dash(h.byCertThumbprint)] : []),
    dash(h.reason),
  ]);
  const columns = ['SEQ', 'TIME', 'STATE', 'EVENT', 'BY', ...(wide ? ['BY CERT'] : []), 'REASON'];
  for (const line of formatTable(columns, rows)) out(line);
}

/** A trail whose chain check is there (a missing one counts as a failed check). */
export type CheckedTrail = GetAuditTrailResponse__Output & { chain: ChainCheck__Output };

/** The trail as a table (`wide`: with the actors' certificate thumbprints and the events' hashes), then its story in a few lines, then what the chain check found. */
export function printAuditTrail(res: CheckedTrail, out: Out, format: TextFormat = 'table'): void {
  const wide = format === 'wide';
  const { chain } = res;
  out(`audit trail of ${res.taskId}: ${plural(res.events.length, 'event', 'events')}`);
  out('');
  const details = res.events.map((e) => structToJson(e.details) as Record<string, unknown>);
  // Events a gateway (an MCP server) wrote for a requester name it: a column of its own then.
  const forRequester = details.some((d) => requesterOf(d) !== undefined);
  const rows = res.events.map((e, i) => [
    `#${e.seq}`,
    dash(isoTime(e.occurredAt)),
    e.eventType,
    dash(e.actorSpiffeId),
    ...(wide ? [dash(e.actorCertThumbprint)] : []),
    ...(forRequester ? [dash(requesterOf(details[i]!))] : []),
    dash(e.requestId),
    ...(wide ? [hashPrefix(e.hash)] : []),
    JSON.stringify(details[i]),
  ]);
  const columns = [
    'SEQ',
    'TIME',
    'EVENT',
    'ACTOR',
    ...(wide ? ['ACTOR CERT'] : []),
    ...(forRequester ? ['ON BEHALF OF'] : []),
    'REQUEST ID',
    ...(wide ? ['HASH'] : []),
    'DETAILS',
  ];
  for (const line of formatTable(columns, rows)) out(line);
  const story = storyOf(res.events, details);
  if (story.length > 0) {
    out('');
    out('story:');
    for (const line of formatTable(['', ''], story).slice(1)) out(`  ${line.trimEnd()}`);
  }
  out('');
  if (chain.ok) out(`hash chain verified: ${plural(chain.events, 'event', 'events')}, each linked to the one before`);
  else out(`HASH CHAIN BROKEN at event #${chain.brokenAt}: ${chain.problem || 'no detail given'}`);
}

/** Who a gateway acted for in an event: the requester's SPIFFE ID, or its principal (sub at iss). */
function requesterOf(details: Record<string, unknown>): string | undefined {
  const r = details.requester as { spiffe_id?: unknown; principal?: { iss?: unknown; sub?: unknown } } | undefined;
  if (!r || typeof r !== 'object') return undefined;
  if (typeof r.spiffe_id === 'string') return r.spiffe_id;
  if (r.principal && typeof r.principal.sub === 'string') return `${r.principal.sub} at ${String(r.principal.iss)}`;
  return undefined;
}

const ENDINGS = new Set(['task.completed', 'task.cancelled', 'task.revoked', 'task.expired']);

/**
 * The trail in a few lines: who created the task (and through which gateway), who polled, who
 * read the result, who was refused, and how and when it ended.
 */
function storyOf(events: GetAuditTrailResponse__Output['events'], details: Record<string, unknown>[]): string[][] {
  const who = (i: number): string => {
    const requester = requesterOf(details[i]!);
    const actor = events[i]!.actorSpiffeId || 'broker';
    return requester && requester !== actor ? `${requester} via ${actor}` : actor;
  };
  const counted = (type: string): string | undefined => {
    const by = new Map<string, number>();
    events.forEach((e, i) => {
      if (e.eventType === type) by.set(who(i), (by.get(who(i)) ?? 0) + 1);
    });
    if (by.size === 0) return undefined;
    return [...by].map(([w, n]) => `${plural(n, 'time', 'times')} by ${w}`).join('; ');
  };
  const lines: string[][] = [];
  const created = events.findIndex((e) => e.eventType === 'task.created');
  if (created >= 0) {
    const owner = details[created]!.owner;
    const forOwner = typeof owner === 'string' && owner !== events[created]!.actorSpiffeId ? ` for ${owner}` : '';
    lines.push(['created', `${dash(isoTime(events[created]!.occurredAt))} by ${events[created]!.actorSpiffeId}${forOwner}`]);
  }
  for (const [type, label] of [
    ['task.approved', 'approved'],
    ['task.polled', 'polled'],
    ['task.result_read', 'result read'],
    ['token.issued', 'tokens issued'],
    ['token.verified', 'verified'],
    ['access.denied', 'denied'],
  ] as const) {
    const line = counted(type);
    if (line) lines.push([label, line]);
  }
  const ended = events.findIndex((e) => ENDINGS.has(e.eventType));
  if (ended >= 0) {
    const d = details[ended]!;
    const reason = typeof d.reason === 'string' && d.reason ? `: ${d.reason}` : '';
    const revoked = typeof d.revoked_tokens === 'number' ? ` (${plural(d.revoked_tokens, 'token', 'tokens')} revoked)` : '';
    lines.push(['ended', `${events[ended]!.eventType.slice('task.'.length)} ${dash(isoTime(events[ended]!.occurredAt))} by ${who(ended)}${reason}${revoked}`]);
  }
  return lines;
}

/**
 * The tree-drawing prefix of each task (├─ , └─ , with │  below a task that has later
 * siblings), from the tasks in depth-first order as GetTaskTree returns them. A task whose parent
 * is not in the list is drawn at the top level.
 */
export function treePrefixes(tasks: readonly Task__Output[]): string[] {
  const byId = new Map(tasks.map((t) => [t.taskId, t]));
  const parentOf = (t: Task__Output): Task__Output | undefined => (t.parentTaskId ? byId.get(t.parentTaskId) : undefined);
  // The last child of each parent (in the order given) closes its branch with └─.
  const lastChild = new Map<string, string>();
  for (const t of tasks) {
    const parent = parentOf(t);
    if (parent) lastChild.set(parent.taskId, t.taskId);
  }
  const isLast = (t: Task__Output): boolean => {
    const parent = parentOf(t);
    return parent !== undefined && lastChild.get(parent.taskId) === t.taskId;
  };
  return tasks.map((t) => {
    const parent = parentOf(t);
    if (!parent) return '';
    let prefix = isLast(t) ? '└─ ' : '├─ ';
    const seen = new Set([t.taskId]);
    for (let a = parent; parentOf(a) && !seen.has(a.taskId); a = parentOf(a)!) {
      seen.add(a.taskId);
      prefix = (isLast(a) ? '   ' : '│  ') + prefix;
    }
    return prefix;
  });
}

/** The tree as an indented table: each task below the one it was delegated from (`wide`: with action, audience and creation time). */
export function printTaskTree(res: GetTaskTreeResponse__Output, asked: string, out: Out, format: TextFormat): void {
  const wide = format === 'wide';
  const root = res.rootTaskId || asked;
  out(`delegation tree of ${root}${asked && asked !== root ? ` (the tree ${asked} belongs to)` : ''}: ${plural(res.tasks.length, 'task', 'tasks')}`);
  out('');
  const prefixes = treePrefixes(res.tasks);
  const rows = res.tasks.map((t, i) => [
    `${prefixes[i] ?? ''}${t.taskId}`,
    shortState(t.state),
    t.ownerSpiffeId,
    ...(wide ? [dash(t.spec?.action), dash(t.spec?.audience)] : []),
    scopesOf(t),
    ...(wide ? [dash(isoTime(t.createdAt))] : []),
    dash(isoTime(t.expiresAt)),
  ]);
  const columns = ['TASK', 'STATE', 'OWNER', ...(wide ? ['ACTION', 'AUDIENCE'] : []), 'SCOPES', ...(wide ? ['CREATED'] : []), 'EXPIRES'];
  for (const line of formatTable(columns, rows)) out(line);
}

/**
 * Short forms of task IDs for a tree trail: `tsk_` and the first 8 characters, or the whole ID
 * for every task when two of them would share a short form.
 */
export function shortTaskIds(taskIds: readonly string[]): Map<string, string> {
  const short = (id: string) => id.slice(0, 12);
  const distinct = new Set(taskIds.map(short)).size === new Set(taskIds).size;
  return new Map(taskIds.map((id) => [id, distinct ? short(id) : id]));
}

/** A tree's trail: every event with its task's short ID (`wide`: and its actor's certificate thumbprint), then each task's chain check. */
export function printTreeAuditTrail(res: CheckedTrail, out: Out, format: TextFormat): void {
  const wide = format === 'wide';
  const { chain } = res;
  const ids = [...res.chains.map((c) => c.taskId), ...res.events.map((e) => e.taskId)];
  const short = shortTaskIds([...new Set(ids)]);
  out(
    `audit trail of the delegation tree of ${res.rootTaskId}: ${plural(res.events.length, 'event', 'events')} of ${plural(res.chains.length, 'task', 'tasks')}`,
  );
  out('');
  const rows = res.events.map((e) => [
    short.get(e.taskId) ?? dash(e.taskId),
    `#${e.seq}`,
    dash(isoTime(e.occurredAt)),
    e.eventType,
    dash(e.actorSpiffeId),
    ...(wide ? [dash(e.actorCertThumbprint)] : []),
    JSON.stringify(structToJson(e.details)),
  ]);
  for (const line of formatTable(['TASK', 'SEQ', 'TIME', 'EVENT', 'ACTOR', ...(wide ? ['ACTOR CERT'] : []), 'DETAILS'], rows)) out(line);
  out('');
  out('hash chains:');
  const checks = res.chains.map((c) => {
    const check = c.chain ?? { ok: false, events: 0, brokenAt: 0, problem: 'the broker returned no chain check' };
    return [
      `  ${short.get(c.taskId) ?? c.taskId}`,
      c.taskId,
      check.ok ? 'ok' : 'BROKEN',
      check.ok ? plural(check.events, 'event', 'events') : `at event #${check.brokenAt}: ${check.problem || 'no detail given'}`,
    ];
  });
  for (const line of formatTable(['  TASK', 'TASK ID', 'CHAIN', 'EVENTS'], checks)) out(line);
  out('');
  if (chain.ok)
    out(`hash chains verified: ${plural(res.chains.length, 'task', 'tasks')}, ${plural(chain.events, 'event', 'events')}, each linked to the one before`);
  else out(`HASH CHAIN BROKEN: ${chain.problem || 'no detail given'} (at event #${chain.brokenAt})`);
}

/** SIGNING_KEY_STATE_NEXT → NEXT; a name this build does not know is shown as it came. */
function shortKeyState(state: string | number): string {
  const text = String(state);
  return text.startsWith('SIGNING_KEY_STATE_') ? text.slice('SIGNING_KEY_STATE_'.length) : text;
}

/** The signing keys as a table, newest first, then how long each phase lasts. */
export function printSigningKeys(res: ListSigningKeysResponse__Output, out: Out): void {
  if (res.keys.length === 0) {
    out('no signing keys');
    return;
  }
  const retiredFor = readableDuration(res.retiredPublicationSeconds * 1000);
  const rows = res.keys.map((k) => {
    const state = shortKeyState(k.state);
    const until = state === 'RETIRED' ? `${dash(isoTime(k.publishedUntil))}${k.published ? '' : ' (gone)'}` : `retirement + ${retiredFor}`;
    return [k.kid, k.alg, state, dash(isoTime(k.createdAt)), dash(isoTime(k.activatesAt)), dash(isoTime(k.retiredAt)), until];
  });
  for (const line of formatTable(['KID', 'ALG', 'STATE', 'CREATED', 'ACTIVE FROM', 'RETIRED', 'IN JWKS UNTIL'], rows)) out(line);
  out('');
  out(
    `pre-publication ${readableDuration(res.prePublicationSeconds * 1000)}: a new key is in the JWKS this long before it signs (NEXT); ` +
      `a retired key stays in the JWKS ${retiredFor}: the longest token lifetime plus the key refresh interval`,
  );
}

/** What a rotation did: the new key, its state and when it signs, and the key it retires. */
export function printRotation(res: RotateSigningKeyResponse__Output, out: Out): void {
  const state = shortKeyState(res.state);
  const activates = dash(isoTime(res.activatesAt));
  const leaves = dash(isoTime(res.retiredKeyPublishedUntil));
  const stateText =
    state === 'NEXT'
      ? 'NEXT (in the JWKS now; signs from its activation time)'
      : res.immediate
        ? 'ACTIVE (immediate: signs now, without pre-publication; verifiers that cached the key set meet an unknown kid and fetch it again)'
        : 'ACTIVE (signs now: no key was active)';
  const retired = !res.retiredKid
    ? undefined
    : state === 'NEXT'
      ? `${res.retiredKid} (signs until ${activates}, then stays in the JWKS until ${leaves} at the earliest)`
      : `${res.retiredKid} (stays in the JWKS until ${leaves}, when every token it signed has expired)`;
  const lines = formatFields([
    ['new signing key', res.kid],
    ['state', stateText],
    ['activates at', activates],
    ['retired key', retired ?? '- (there was no active key)'],
    ['discarded key', res.discardedKid ? `${res.discardedKid} (was NEXT, never signed; out of the JWKS now)` : undefined],
  ]);
  for (const line of lines) out(line);
}
