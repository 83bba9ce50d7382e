/**
 * The text output of the admin commands: tasks as table rows or `key: value` blocks, audit
 * trails as tables. (--json output needs none of this: it is the response's proto3 JSON.)
 */
import type { ChainCheck__Output } from '../../gen/taskbroker/v1/ChainCheck.js';
import type { GetAuditTrailResponse__Output } from '../../gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { Task__Output } from '../../gen/taskbroker/v1/Task.js';
import type { Timestamp__Output } from '../../gen/google/protobuf/Timestamp.js';
import { parseTaskState } from '../../protocol/enums.js';
import { structToJson } from '../../protocol/struct.js';
import { fromTimestamp } from '../../protocol/timestamps.js';
import { formatFields, formatTable } from '../table.js';
import type { Out } from './run.js';

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

const TASK_COLUMNS = ['TASK ID', 'STATE', 'OWNER', 'AUDIENCE', 'ACTION', 'CREATED', 'EXPIRES'] as const;

function taskRow(t: Task__Output): string[] {
  return [t.taskId, shortState(t.state), t.ownerSpiffeId, dash(t.spec?.audience), dash(t.spec?.action), dash(isoTime(t.createdAt)), dash(isoTime(t.expiresAt))];
}

export function printTaskTable(tasks: Task__Output[], out: Out): void {
  for (const line of formatTable(TASK_COLUMNS, tasks.map(taskRow))) out(line);
}

/** A task as a `key: value` block, after a blank line; nothing when the response had none. */
export function printTaskFields(t: Task__Output | null, out: Out): void {
  if (!t) return;
  const approved = t.approvedBy !== '' || t.approvedAt !== null;
  const ended = t.endedAt !== null || t.endedBy !== '';
  out('');
  const lines = formatFields([
    ['task id', t.taskId],
    ['state', shortState(t.state)],
    ['owner', t.ownerSpiffeId],
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
  ]);
  for (const line of lines) out(line);
}

/** A trail whose chain check is there (a missing one counts as a failed check). */
export type CheckedTrail = GetAuditTrailResponse__Output & { chain: ChainCheck__Output };

/** The trail as a table, then what the chain check found. */
export function printAuditTrail(res: CheckedTrail, out: Out): void {
  const { chain } = res;
  out(`audit trail of ${res.taskId}: ${plural(res.events.length, 'event', 'events')}`);
  out('');
  const rows = res.events.map((e) => [
    `#${e.seq}`,
    dash(isoTime(e.occurredAt)),
    e.eventType,
    dash(e.actorSpiffeId),
    dash(e.requestId),
    JSON.stringify(structToJson(e.details)),
  ]);
  for (const line of formatTable(['SEQ', 'TIME', 'EVENT', 'ACTOR', 'REQUEST ID', 'DETAILS'], rows)) out(line);
  out('');
  if (chain.ok) out(`hash chain verified: ${plural(chain.events, 'event', 'events')}, each linked to the one before`);
  else out(`HASH CHAIN BROKEN at event #${chain.brokenAt}: ${chain.problem || 'no detail given'}`);
}
