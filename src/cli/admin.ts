/**
 * `task-broker admin <command>`: the TaskBrokerAdmin API from a terminal or a script, one
 * subcommand per RPC, over mTLS with the admin's own X509-SVID.
 *
 * The broker is authenticated by SPIFFE ID (`--broker-id`), never by host name: its certificate
 * must verify against `--bundle` and carry exactly that ID. The ID is required although the
 * client library can do without one (it then accepts any SVID of the bundle's trust domain):
 * on the admin plane that would let any workload of the trust domain pose as the broker and
 * quietly swallow a revocation.
 *
 * Output: readable tables and `key: value` blocks by default; with `--json`, exactly one JSON
 * document on stdout (the response, in the proto3 JSON mapping) and nothing else. Errors go to
 * stderr as `task-broker admin <cmd>: <STATUS>: <details>`; the exit code follows the gRPC status
 * (see ADMIN_EXIT_NOTES), so scripts can tell "denied" from "not found" from "wrong state".
 */
import * as grpc from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import { AdminClient } from '../client/admin-client.js';
import type { Duration__Output } from '../gen/google/protobuf/Duration.js';
import type { Struct__Output } from '../gen/google/protobuf/Struct.js';
import type { Timestamp__Output } from '../gen/google/protobuf/Timestamp.js';
import type { ApproveTaskResponse__Output } from '../gen/taskbroker/v1/ApproveTaskResponse.js';
import type { AuditEvent__Output } from '../gen/taskbroker/v1/AuditEvent.js';
import type { GetAuditTrailResponse__Output } from '../gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { ListTasksRequest } from '../gen/taskbroker/v1/ListTasksRequest.js';
import type { ListTasksResponse__Output } from '../gen/taskbroker/v1/ListTasksResponse.js';
import type { RevokeTaskResponse__Output } from '../gen/taskbroker/v1/RevokeTaskResponse.js';
import type { RevokeWorkloadResponse__Output } from '../gen/taskbroker/v1/RevokeWorkloadResponse.js';
import type { RotateSigningKeyResponse__Output } from '../gen/taskbroker/v1/RotateSigningKeyResponse.js';
import type { Task__Output } from '../gen/taskbroker/v1/Task.js';
import { TaskState, type TaskState__Output } from '../gen/taskbroker/v1/TaskState.js';
import { structToJson } from '../protocol/struct.js';
import { fromTimestamp, toTimestamp } from '../protocol/timestamps.js';
import { SpiffeId } from '../spiffe/id.js';
import type { JsonObject, JsonValue } from '../model/task.js';
import { ExitCode, parseDuration, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from './options.js';
import { formatFields, formatTable } from './table.js';

// ---------------------------------------------------------------------------------------------
// Specs

/** Options every admin command takes: where the broker is, who it must be, who we are. */
export const adminConnectionOptions: Record<string, OptionSpec> = {
  broker: {
    type: 'string',
    placeholder: 'HOST:PORT',
    env: 'TASK_BROKER_ADDRESS',
    default: '127.0.0.1:8443',
    description: "Address of the broker's gRPC (mTLS) listener",
  },
  'broker-id': {
    type: 'string',
    placeholder: 'SPIFFE_ID',
    env: 'TASK_BROKER_ID',
    required: true,
    description:
      "The broker's expected SPIFFE ID, e.g. spiffe://example.org/task-broker: the connection is refused unless the broker's certificate verifies against --bundle and carries exactly this ID",
  },
  'svid-cert': {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_SVID_CERT',
    required: true,
    description: "Your own X509-SVID certificate chain (PEM, leaf first); its SPIFFE ID must be an admin in the broker's policy",
  },
  'svid-key': {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_SVID_KEY',
    required: true,
    description: 'The private key of your X509-SVID (PEM)',
  },
  bundle: {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_BUNDLE',
    required: true,
    description: "Trust bundle of the broker's trust domain (PEM certificates or SPIFFE bundle JSON), used to verify the broker's certificate",
  },
  timeout: {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_ADMIN_TIMEOUT',
    default: '10s',
    description: 'Deadline of each call to the broker (--all makes one call per page), e.g. 500ms, 10s, 1m',
  },
  json: {
    type: 'boolean',
    description:
      'Print exactly one JSON document on stdout, the response (proto3 JSON mapping: lowerCamelCase fields, RFC 3339 timestamps, enum names, defaults included), and nothing else',
  },
};

const ADMIN_EXIT_NOTES =
  'Exit status: 0 ok; 1 failure (broker unreachable, deadline exceeded, internal error, unreadable files); ' +
  '2 usage error (missing or invalid flag, INVALID_ARGUMENT); 3 denied (PERMISSION_DENIED: not an admin in the policy; ' +
  'UNAUTHENTICATED: the broker did not accept your SVID); 4 NOT_FOUND; 5 conflict (FAILED_PRECONDITION: the task is not in a state ' +
  'that allows it; ALREADY_EXISTS).\n' +
  'Errors are printed to stderr as: task-broker admin <command>: <STATUS>: <details>';

const STATE_NAMES = Object.values(TaskState)
  .filter((s) => s !== TaskState.TASK_STATE_UNSPECIFIED)
  .map((s) => s.replace(/^TASK_STATE_/, ''));

const selectorHelp = 'an exact SPIFFE ID or a pattern (`*` one path segment, a trailing `**` one or more)';

export const adminListTasksSpec: CommandSpec = {
  name: 'admin list-tasks',
  summary: 'List tasks, newest first, one page at a time (or every page with --all).',
  options: {
    owner: { type: 'string', placeholder: 'SELECTOR', description: `Only tasks owned by ${selectorHelp}, e.g. spiffe://example.org/ns/billing/**` },
    state: { type: 'string', placeholder: 'STATE', description: `Only tasks in this state: ${STATE_NAMES.join(', ')}` },
    audience: { type: 'string', placeholder: 'SELECTOR', description: `Only tasks whose audience is ${selectorHelp}` },
    'created-after': { type: 'string', placeholder: 'ISO-8601', description: 'Only tasks created at or after this time, e.g. 2025-06-01T00:00:00Z' },
    'created-before': { type: 'string', placeholder: 'ISO-8601', description: 'Only tasks created strictly before this time' },
    'page-size': { type: 'string', placeholder: 'N', description: 'Tasks per page, 1 to 500 (default: the broker\'s, 50)' },
    'page-token': { type: 'string', placeholder: 'TOKEN', description: 'Continue a listing where the previous page ended (same filters)' },
    all: { type: 'boolean', description: 'Follow the pages to the end and print every task' },
    ...adminConnectionOptions,
  },
  notes: `Without --all one page is printed and, when there are more, the --page-token to continue with.\n${ADMIN_EXIT_NOTES}`,
};

export const adminAuditTrailSpec: CommandSpec = {
  name: 'admin audit-trail',
  summary: "Print a task's audit events in order and check their hash chain.",
  options: {
    task: { type: 'string', placeholder: 'TASK_ID', required: true, description: 'The task, e.g. tsk_…' },
    ...adminConnectionOptions,
  },
  notes: `A broken hash chain (an event changed, removed or reordered) is reported on stderr and exits 1, also with --json.\n${ADMIN_EXIT_NOTES}`,
};

export const adminApproveTaskSpec: CommandSpec = {
  name: 'admin approve-task',
  summary: 'Approve a PENDING_APPROVAL task: it becomes ACTIVE and its owner can get tokens. Nobody approves their own task.',
  options: {
    task: { type: 'string', placeholder: 'TASK_ID', required: true, description: 'The task to approve' },
    comment: { type: 'string', placeholder: 'TEXT', description: 'Why it is approved; recorded in the task and its audit trail' },
    ...adminConnectionOptions,
  },
  notes: ADMIN_EXIT_NOTES,
};

export const adminRevokeTaskSpec: CommandSpec = {
  name: 'admin revoke-task',
  summary: 'Revoke a live task (ACTIVE or PENDING_APPROVAL) and every token it produced.',
  options: {
    task: { type: 'string', placeholder: 'TASK_ID', required: true, description: 'The task to revoke' },
    reason: { type: 'string', placeholder: 'TEXT', description: 'Why; recorded in the task and its audit trail' },
    ...adminConnectionOptions,
  },
  notes: ADMIN_EXIT_NOTES,
};

export const adminRevokeWorkloadSpec: CommandSpec = {
  name: 'admin revoke-workload',
  summary: 'Kill switch: revoke every live task, and so every token, of the workloads a selector matches, in one transaction.',
  options: {
    selector: { type: 'string', placeholder: 'SPIFFE_ID_OR_PATTERN', required: true, description: `The workloads: ${selectorHelp}, e.g. spiffe://example.org/ns/billing/**` },
    reason: { type: 'string', placeholder: 'TEXT', description: 'Why; recorded in every revoked task and the audit trail' },
    ...adminConnectionOptions,
  },
  notes: ADMIN_EXIT_NOTES,
};

export const adminRotateSigningKeySpec: CommandSpec = {
  name: 'admin rotate-signing-key',
  summary: 'Make a new token signing key active; the old one stays in the JWKS until every token it signed has expired.',
  options: { ...adminConnectionOptions },
  notes: ADMIN_EXIT_NOTES,
};

// ---------------------------------------------------------------------------------------------
// Exit codes and errors

/** The exit code for a gRPC status code (the contract scripts rely on). */
export function exitCodeForStatus(code: grpc.status): number {
  switch (code) {
    case grpc.status.OK:
      return ExitCode.ok;
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.UNAUTHENTICATED:
      return ExitCode.denied;
    case grpc.status.NOT_FOUND:
      return ExitCode.notFound;
    case grpc.status.FAILED_PRECONDITION:
    case grpc.status.ALREADY_EXISTS:
      return ExitCode.conflict;
    case grpc.status.INVALID_ARGUMENT:
      return ExitCode.usage;
    default:
      return ExitCode.failure;
  }
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number' && typeof (err as Partial<grpc.ServiceError>).details === 'string';
}

// ---------------------------------------------------------------------------------------------
// Options

type Out = (line: string) => void;
type Err = (text: string) => void;

const defaultErr: Err = (text) => {
  process.stderr.write(text);
};

function noPositionals(spec: CommandSpec, parsed: ParsedCommand): void {
  if (parsed.positionals.length > 0) {
    throw new UsageError(`unexpected argument "${parsed.positionals[0] ?? ''}" (every value is given with a flag)\nRun 'task-broker ${spec.name} --help' for usage.`);
  }
}

/** A string option that must be present and non-empty. */
function requiredText(spec: CommandSpec, parsed: ParsedCommand, name: string): string {
  const value = stringOption(parsed.values, name)?.trim();
  if (!value) throw new UsageError(`--${name} must not be empty\nRun 'task-broker ${spec.name} --help' for usage.`);
  return value;
}

function optionalText(parsed: ParsedCommand, name: string): string | undefined {
  const value = stringOption(parsed.values, name)?.trim();
  return value ? value : undefined;
}

interface Connection {
  address: string;
  brokerId: string;
  certChainPem: string;
  keyPem: string;
  bundle: string;
  deadlineMs: number;
  json: boolean;
}

async function readOptionFile(option: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read --${option} ${path}: ${(err as Error).message}`);
  }
}

async function connection(spec: CommandSpec, parsed: ParsedCommand): Promise<Connection> {
  const address = requiredText(spec, parsed, 'broker');
  const brokerId = requiredText(spec, parsed, 'broker-id');
  try {
    SpiffeId.parse(brokerId);
  } catch (err) {
    throw new UsageError(`--broker-id must be the broker's SPIFFE ID: ${(err as Error).message}`);
  }
  const timeout = stringOption(parsed.values, 'timeout') ?? '10s';
  const deadlineMs = parseDuration(timeout, '--timeout');
  if (deadlineMs <= 0) throw new UsageError('--timeout must be longer than 0');
  const [certChainPem, keyPem, bundle] = await Promise.all([
    readOptionFile('svid-cert', requiredText(spec, parsed, 'svid-cert')),
    readOptionFile('svid-key', requiredText(spec, parsed, 'svid-key')),
    readOptionFile('bundle', requiredText(spec, parsed, 'bundle')),
  ]);
  return { address, brokerId, certChainPem, keyPem, bundle, deadlineMs, json: parsed.values.json === true };
}

interface Session {
  client: AdminClient;
  /** Per-call options: the deadline. */
  call: () => { deadlineMs: number };
  json: boolean;
  out: Out;
  err: Err;
  /** "task-broker admin list-tasks" */
  prefix: string;
}

/**
 * Connects, runs `body`, closes. A gRPC error becomes its stderr line and exit code; any other
 * error propagates (main prints it and exits 1, or 2 for a UsageError).
 */
async function withAdmin(spec: CommandSpec, parsed: ParsedCommand, out: Out, err: Err, body: (session: Session) => Promise<number>): Promise<number> {
  const conn = await connection(spec, parsed);
  let client: AdminClient;
  try {
    client = AdminClient.withSvid(conn.address, { certChainPem: conn.certChainPem, keyPem: conn.keyPem, bundle: conn.bundle, serverId: conn.brokerId });
  } catch (e) {
    throw new Error(`cannot use the SVID or bundle files: ${(e as Error).message}`);
  }
  const prefix = `task-broker ${spec.name}`;
  try {
    return await body({ client, call: () => ({ deadlineMs: conn.deadlineMs }), json: conn.json, out, err, prefix });
  } catch (e) {
    if (!isServiceError(e)) throw e;
    const name = grpc.status[e.code] ?? `STATUS ${String(e.code)}`;
    err(`${prefix}: ${name}: ${e.details || e.message}\n`);
    if (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED) {
      err(`  (broker ${conn.address}, expected SPIFFE ID ${conn.brokerId}: is it running there, and does its certificate verify against --bundle?)\n`);
    }
    return exitCodeForStatus(e.code);
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Rendering: proto3 JSON for --json, text otherwise

function isoTime(ts: Timestamp__Output | null | undefined): string | null {
  const date = fromTimestamp(ts);
  return date ? date.toISOString() : null;
}

function durationJson(d: Duration__Output | null | undefined): string | null {
  if (!d) return null;
  return d.nanos ? `${(Number(d.seconds) + d.nanos / 1e9).toFixed(9).replace(/0+$/, '')}s` : `${d.seconds}s`;
}

function structJson(s: Struct__Output | null | undefined): JsonObject {
  return structToJson(s);
}

function taskJson(t: Task__Output | null): JsonValue {
  if (!t) return null;
  return {
    taskId: t.taskId,
    ownerSpiffeId: t.ownerSpiffeId,
    spec: t.spec
      ? {
          action: t.spec.action,
          resources: t.spec.resources,
          audience: t.spec.audience,
          scopes: t.spec.scopes,
          params: structJson(t.spec.params),
          ttl: durationJson(t.spec.ttl),
        }
      : null,
    taskHash: t.taskHash,
    state: t.state,
    createdAt: isoTime(t.createdAt),
    expiresAt: isoTime(t.expiresAt),
    endedAt: isoTime(t.endedAt),
    endedBy: t.endedBy,
    endReason: t.endReason,
    approvedBy: t.approvedBy,
    approvedAt: isoTime(t.approvedAt),
    approvalComment: t.approvalComment,
    policyRule: t.policyRule,
  };
}

function auditEventJson(e: AuditEvent__Output): JsonValue {
  return {
    seq: e.seq,
    eventType: e.eventType,
    actorSpiffeId: e.actorSpiffeId,
    actorCertThumbprint: e.actorCertThumbprint,
    requestId: e.requestId,
    occurredAt: isoTime(e.occurredAt),
    details: structJson(e.details),
    prevHash: e.prevHash,
    hash: e.hash,
  };
}

function printJson(out: Out, value: JsonValue): void {
  out(JSON.stringify(value, null, 2));
}

const shortState = (state: string): string => state.replace(/^TASK_STATE_/, '');
const dash = (text: string | null | undefined): string => (text ? text : '-');

const TASK_COLUMNS = ['TASK ID', 'STATE', 'OWNER', 'AUDIENCE', 'ACTION', 'CREATED', 'EXPIRES'] as const;

function taskRow(t: Task__Output): string[] {
  return [t.taskId, shortState(t.state), t.ownerSpiffeId, dash(t.spec?.audience), dash(t.spec?.action), dash(isoTime(t.createdAt)), dash(isoTime(t.expiresAt))];
}

function taskFields(t: Task__Output): string[] {
  const approved = t.approvedBy !== '' || t.approvedAt !== null;
  const ended = t.endedAt !== null || t.endedBy !== '';
  return formatFields([
    ['task id', t.taskId],
    ['state', shortState(t.state)],
    ['owner', t.ownerSpiffeId],
    ['action', dash(t.spec?.action)],
    ['audience', dash(t.spec?.audience)],
    ['resources', t.spec?.resources.length ? t.spec.resources.join(', ') : '-'],
    ['scopes', t.spec?.scopes.length ? t.spec.scopes.join(' ') : '-'],
    ['params', JSON.stringify(structJson(t.spec?.params))],
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
}

// ---------------------------------------------------------------------------------------------
// list-tasks

function parseState(value: string | undefined): TaskState__Output | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const name = value.trim().toUpperCase().replace(/-/g, '_').replace(/^TASK_STATE_/, '');
  if (!STATE_NAMES.includes(name)) throw new UsageError(`--state must be one of ${STATE_NAMES.join(', ')}, got "${value}"`);
  return `TASK_STATE_${name}` as TaskState__Output;
}

function parseTime(value: string | undefined, name: string): Date | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const text = value.trim();
  const ms = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/i.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(ms)) throw new UsageError(`--${name} must be an ISO-8601 time such as 2025-06-01T12:00:00Z, got "${value}"`);
  return new Date(ms);
}

function parsePageSize(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value.trim()) ? Number(value.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 500) throw new UsageError(`--page-size must be a whole number from 1 to 500, got "${value}"`);
  return n;
}

export async function runAdminListTasks(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminListTasksSpec;
  noPositionals(spec, parsed);
  const state = parseState(stringOption(parsed.values, 'state'));
  const createdAfter = parseTime(stringOption(parsed.values, 'created-after'), 'created-after');
  const createdBefore = parseTime(stringOption(parsed.values, 'created-before'), 'created-before');
  const pageSize = parsePageSize(stringOption(parsed.values, 'page-size'));
  const all = parsed.values.all === true;
  const request: ListTasksRequest = {
    owner: optionalText(parsed, 'owner') ?? '',
    state: state ?? TaskState.TASK_STATE_UNSPECIFIED,
    audience: optionalText(parsed, 'audience') ?? '',
    createdAfter: createdAfter ? toTimestamp(createdAfter) : null,
    createdBefore: createdBefore ? toTimestamp(createdBefore) : null,
    pageSize: pageSize ?? 0,
    pageToken: optionalText(parsed, 'page-token') ?? '',
  };

  return withAdmin(spec, parsed, out, err, async ({ client, call, json }) => {
    const tasks: Task__Output[] = [];
    let page: ListTasksResponse__Output = await client.listTasks(request, call());
    tasks.push(...page.tasks);
    const seen = new Set<string>();
    while (all && page.nextPageToken) {
      if (seen.has(page.nextPageToken)) throw new Error('the broker returned the same page token twice; stopping');
      seen.add(page.nextPageToken);
      page = await client.listTasks({ ...request, pageToken: page.nextPageToken }, call());
      tasks.push(...page.tasks);
    }
    const nextPageToken = all ? '' : page.nextPageToken;

    if (json) {
      printJson(out, { tasks: tasks.map(taskJson), nextPageToken });
      return ExitCode.ok;
    }
    if (tasks.length === 0) {
      out(request.pageToken ? 'no more tasks' : 'no tasks match');
      return ExitCode.ok;
    }
    for (const line of formatTable(TASK_COLUMNS, tasks.map(taskRow))) out(line);
    out('');
    out(`${tasks.length} ${tasks.length === 1 ? 'task' : 'tasks'}${all ? '' : ' on this page'}`);
    if (nextPageToken) out(`more tasks: continue with --page-token ${nextPageToken} (same filters), or list them all with --all`);
    return ExitCode.ok;
  });
}

// ---------------------------------------------------------------------------------------------
// audit-trail

/** Prints a trail (text or JSON); a broken chain is shouted on stderr and exits 1. */
export function reportAuditTrail(res: GetAuditTrailResponse__Output, json: boolean, out: Out, err: Err, prefix = 'task-broker admin audit-trail'): number {
  const chain = res.chain ?? { ok: false, events: 0, brokenAt: 0, problem: 'the broker returned no chain check' };
  if (json) {
    printJson(out, {
      taskId: res.taskId,
      events: res.events.map(auditEventJson),
      chain: { ok: chain.ok, events: chain.events, brokenAt: chain.brokenAt, problem: chain.problem },
    });
  } else {
    out(`audit trail of ${res.taskId}: ${res.events.length} ${res.events.length === 1 ? 'event' : 'events'}`);
    out('');
    const rows = res.events.map((e) => [
      `#${e.seq}`,
      dash(isoTime(e.occurredAt)),
      e.eventType,
      dash(e.actorSpiffeId),
      dash(e.requestId),
      JSON.stringify(structJson(e.details)),
    ]);
    for (const line of formatTable(['SEQ', 'TIME', 'EVENT', 'ACTOR', 'REQUEST ID', 'DETAILS'], rows)) out(line);
    out('');
    if (chain.ok) out(`hash chain verified: ${chain.events} ${chain.events === 1 ? 'event' : 'events'}, each linked to the one before`);
    else out(`HASH CHAIN BROKEN at event #${chain.brokenAt}: ${chain.problem || 'no detail given'}`);
  }
  if (chain.ok) return ExitCode.ok;
  err(
    `${prefix}: HASH CHAIN BROKEN: the audit trail of ${res.taskId} has been tampered with or damaged at event #${chain.brokenAt}` +
      ` (${chain.problem || 'no detail given'}); ${chain.events} events checked. Do not trust this trail.\n`,
  );
  return ExitCode.failure;
}

export async function runAdminAuditTrail(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminAuditTrailSpec;
  noPositionals(spec, parsed);
  const taskId = requiredText(spec, parsed, 'task');
  return withAdmin(spec, parsed, out, err, async ({ client, call, json, prefix }) => {
    const res = await client.getWholeAuditTrail(taskId, call());
    return reportAuditTrail(res, json, out, err, prefix);
  });
}

// ---------------------------------------------------------------------------------------------
// approve-task, revoke-task, revoke-workload, rotate-signing-key

export async function runAdminApproveTask(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminApproveTaskSpec;
  noPositionals(spec, parsed);
  const taskId = requiredText(spec, parsed, 'task');
  const comment = stringOption(parsed.values, 'comment') ?? '';
  return withAdmin(spec, parsed, out, err, async ({ client, call, json }) => {
    const res: ApproveTaskResponse__Output = await client.approveTask(taskId, comment, call());
    if (json) {
      printJson(out, { task: taskJson(res.task) });
      return ExitCode.ok;
    }
    out(`approved ${taskId}: it is now ${res.task ? shortState(res.task.state) : 'ACTIVE'}`);
    if (res.task) {
      out('');
      for (const line of taskFields(res.task)) out(line);
    }
    return ExitCode.ok;
  });
}

export async function runAdminRevokeTask(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminRevokeTaskSpec;
  noPositionals(spec, parsed);
  const taskId = requiredText(spec, parsed, 'task');
  const reason = stringOption(parsed.values, 'reason') ?? '';
  return withAdmin(spec, parsed, out, err, async ({ client, call, json }) => {
    const res: RevokeTaskResponse__Output = await client.revokeTask(taskId, reason, call());
    if (json) {
      printJson(out, { task: taskJson(res.task), revokedTokens: res.revokedTokens });
      return ExitCode.ok;
    }
    out(`revoked ${taskId}; tokens revoked with it: ${res.revokedTokens}`);
    if (res.task) {
      out('');
      for (const line of taskFields(res.task)) out(line);
    }
    return ExitCode.ok;
  });
}

export async function runAdminRevokeWorkload(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminRevokeWorkloadSpec;
  noPositionals(spec, parsed);
  const selector = requiredText(spec, parsed, 'selector');
  const reason = stringOption(parsed.values, 'reason') ?? '';
  return withAdmin(spec, parsed, out, err, async ({ client, call, json }) => {
    const res: RevokeWorkloadResponse__Output = await client.revokeWorkload(selector, reason, call());
    if (json) {
      printJson(out, { revokedTasks: res.revokedTasks, revokedTokens: res.revokedTokens, taskIds: res.taskIds });
      return ExitCode.ok;
    }
    if (res.revokedTasks === 0) {
      out(`no live tasks matched ${selector}: nothing revoked`);
      return ExitCode.ok;
    }
    out(`revoked ${res.revokedTasks} ${res.revokedTasks === 1 ? 'task' : 'tasks'} and ${res.revokedTokens} ${res.revokedTokens === 1 ? 'token' : 'tokens'} of workloads matching ${selector}:`);
    for (const id of res.taskIds) out(`  ${id}`);
    return ExitCode.ok;
  });
}

export async function runAdminRotateSigningKey(parsed: ParsedCommand, out: Out, err: Err = defaultErr): Promise<number> {
  const spec = adminRotateSigningKeySpec;
  noPositionals(spec, parsed);
  return withAdmin(spec, parsed, out, err, async ({ client, call, json }) => {
    const res: RotateSigningKeyResponse__Output = await client.rotateSigningKey(call());
    if (json) {
      printJson(out, { kid: res.kid, retiredKid: res.retiredKid });
      return ExitCode.ok;
    }
    for (const line of formatFields([
      ['new signing key', res.kid],
      ['retired key', res.retiredKid ? `${res.retiredKid} (stays in the JWKS until every token it signed has expired)` : '- (there was no active key)'],
    ])) {
      out(line);
    }
    return ExitCode.ok;
  });
}

// ---------------------------------------------------------------------------------------------
// Registration

export interface AdminCommand {
  spec: CommandSpec;
  run: (parsed: ParsedCommand, out: (line: string) => void) => Promise<number>;
}

/** Every admin command, keyed by its full name, for main.ts. */
export const adminCommands: Record<string, AdminCommand> = {
  'admin list-tasks': { spec: adminListTasksSpec, run: (p, out) => runAdminListTasks(p, out) },
  'admin audit-trail': { spec: adminAuditTrailSpec, run: (p, out) => runAdminAuditTrail(p, out) },
  'admin approve-task': { spec: adminApproveTaskSpec, run: (p, out) => runAdminApproveTask(p, out) },
  'admin revoke-task': { spec: adminRevokeTaskSpec, run: (p, out) => runAdminRevokeTask(p, out) },
  'admin revoke-workload': { spec: adminRevokeWorkloadSpec, run: (p, out) => runAdminRevokeWorkload(p, out) },
  'admin rotate-signing-key': { spec: adminRotateSigningKeySpec, run: (p, out) => runAdminRotateSigningKey(p, out) },
};
