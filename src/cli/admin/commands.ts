/**
 * `task-broker admin <command>`: the TaskBrokerAdmin API from a terminal or a script, one
 * subcommand per RPC, over mTLS with the admin's own X509-SVID. Each command is one entry of
 * the table below (flags, call, text output); run.ts does the rest the same way for all.
 *
 * The broker is authenticated by SPIFFE ID (`--broker-id`), never by host name: its certificate
 * must verify against its trust bundle (`--bundle`, or the Workload API's: identity.ts) and
 * carry exactly that ID. The ID is required although the client library can do without one
 * (it then accepts any SVID of the bundle's trust domain): on the admin plane that would let any
 * workload of the trust domain pose as the broker and quietly swallow a revocation.
 *
 * Output: readable tables and `key: value` blocks by default (`-o table`), with more columns with
 * `-o wide`; with `--json` (`-o json`), exactly one JSON document on stdout (the response, in the
 * proto3 JSON mapping) and nothing else. A command about one task takes its ID as `--task` or as
 * its one argument. Errors go to
 * stderr as `task-broker admin <cmd>: <STATUS>: <details>`; the exit code follows the gRPC status
 * (see ADMIN_EXIT_NOTES), so scripts can tell "denied" from "not found" from "wrong state".
 */
import { readFileSync } from 'node:fs';
import type { AdminClient } from '../../client/admin-client.js';
import { unaryCall, type CallOptions } from '../../client/broker-client.js';
import type { ApproveTaskResponse__Output } from '../../gen/taskbroker/v1/ApproveTaskResponse.js';
import type { GetAuditTrailResponse__Output } from '../../gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { GetTaskTreeResponse__Output } from '../../gen/taskbroker/v1/GetTaskTreeResponse.js';
import type { ListSigningKeysResponse__Output } from '../../gen/taskbroker/v1/ListSigningKeysResponse.js';
import type { ListTasksRequest } from '../../gen/taskbroker/v1/ListTasksRequest.js';
import type { ListTasksResponse__Output } from '../../gen/taskbroker/v1/ListTasksResponse.js';
import type { RevokeTaskResponse__Output } from '../../gen/taskbroker/v1/RevokeTaskResponse.js';
import type { RevokeWorkloadResponse__Output } from '../../gen/taskbroker/v1/RevokeWorkloadResponse.js';
import type { RotateSigningKeyResponse__Output } from '../../gen/taskbroker/v1/RotateSigningKeyResponse.js';
import type { Task__Output } from '../../gen/taskbroker/v1/Task.js';
import type { TaskBrokerAdminGetTaskResponse__Output } from '../../gen/taskbroker/v1/TaskBrokerAdminGetTaskResponse.js';
import { TASK_STATES } from '../../model/task.js';
import { parseTaskState, taskStateName, type TaskStateName } from '../../protocol/enums.js';
import { toTimestamp } from '../../protocol/timestamps.js';
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from '../../tasks/limits.js';
import { ExitCode, seeHelp, stringOption, UsageError, type CommandSpec, type ParsedCommand } from '../options.js';
import {
  plural,
  printAuditTrail,
  printRotation,
  printSigningKeys,
  printTaskDetails,
  printTaskFields,
  printTaskTable,
  printTaskTree,
  printTreeAuditTrail,
  shortState,
  type CheckedTrail,
} from './render.js';
import {
  ADMIN_EXIT_NOTES,
  adminCommand,
  adminConnectionOptions,
  optionalText,
  report,
  requiredText,
  type AdminCommand,
  type AdminCommandDef,
  type AdminRpc,
  type Err,
  type Out,
} from './run.js';

const selectorHelp = 'an exact SPIFFE ID or a pattern (`*` one path segment, a trailing `**` one or more)';

/** The --task option of a command about one task, which also takes the ID as its one argument (spec.args). */
function taskOption(description: string): CommandSpec['options'] {
  return { task: { type: 'string', placeholder: 'TASK_ID', description: `${description}, e.g. tsk_… (or give it as the argument)` } };
}

/**
 * The task of a command about one task: --task or the one argument. Both are fine when they agree;
 * two different IDs, or more than one argument, are a usage error on one line.
 */
function taskArgument(spec: CommandSpec, parsed: ParsedCommand): string {
  const help = seeHelp(spec.name);
  if (parsed.positionals.length > 1) throw new UsageError(`unexpected argument "${parsed.positionals[1] ?? ''}": one task ID at most ${help}`);
  const flag = optionalText(parsed, 'task');
  const positional = parsed.positionals[0]?.trim() || undefined;
  if (flag && positional && flag !== positional) throw new UsageError(`--task ${flag} and the argument ${positional} name different tasks: give one ${help}`);
  const taskId = flag ?? positional;
  if (!taskId) throw new UsageError(`--task is required (or give the task ID as the argument) ${help}`);
  return taskId;
}

// ---------------------------------------------------------------------------------------------
// list-tasks

const listTasksSpec: CommandSpec = {
  name: 'admin list-tasks',
  summary: 'List tasks, newest first, one page at a time (or every page with --all).',
  options: {
    owner: { type: 'string', placeholder: 'SELECTOR', description: `Only tasks owned by ${selectorHelp}, e.g. spiffe://example.org/ns/billing/**` },
    state: { type: 'string', placeholder: 'STATE', description: `Only tasks in this state: ${TASK_STATES.join(', ')}` },
    audience: { type: 'string', placeholder: 'SELECTOR', description: `Only tasks whose audience is ${selectorHelp}` },
    'created-after': { type: 'string', placeholder: 'ISO-8601', description: 'Only tasks created at or after this time, e.g. 2025-06-01T00:00:00Z' },
    'created-before': { type: 'string', placeholder: 'ISO-8601', description: 'Only tasks created strictly before this time' },
    'page-size': { type: 'string', placeholder: 'N', description: `Tasks per page, 1 to ${MAX_PAGE_SIZE} (default: the broker's, ${DEFAULT_PAGE_SIZE})` },
    'page-token': { type: 'string', placeholder: 'TOKEN', description: 'Continue a listing where the previous page ended (same filters)' },
    all: { type: 'boolean', description: 'Follow the pages to the end and print every task' },
    ...adminConnectionOptions,
  },
  notes: `Without --all one page is printed and, when there are more, the --page-token to continue with.\n${ADMIN_EXIT_NOTES}`,
};

function parseState(value: string | undefined): TaskStateName | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const state = parseTaskState(value);
  if (!state) throw new UsageError(`--state must be one of ${TASK_STATES.join(', ')}, got "${value}"`);
  return taskStateName(state);
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
  if (!Number.isInteger(n) || n < 1 || n > MAX_PAGE_SIZE) throw new UsageError(`--page-size must be a whole number from 1 to ${MAX_PAGE_SIZE}, got "${value}"`);
  return n;
}

const listTasks: AdminCommandDef<{ request: ListTasksRequest; all: boolean }, ListTasksResponse__Output> = {
  spec: listTasksSpec,
  rpc: 'ListTasks',
  request(parsed) {
    const state = parseState(stringOption(parsed.values, 'state'));
    const createdAfter = parseTime(stringOption(parsed.values, 'created-after'), 'created-after');
    const createdBefore = parseTime(stringOption(parsed.values, 'created-before'), 'created-before');
    const pageSize = parsePageSize(stringOption(parsed.values, 'page-size'));
    const request: ListTasksRequest = {
      owner: optionalText(parsed, 'owner') ?? '',
      state: state ?? 'TASK_STATE_UNSPECIFIED',
      audience: optionalText(parsed, 'audience') ?? '',
      createdAfter: createdAfter ? toTimestamp(createdAfter) : null,
      createdBefore: createdBefore ? toTimestamp(createdBefore) : null,
      pageSize: pageSize ?? 0,
      pageToken: optionalText(parsed, 'page-token') ?? '',
    };
    return { request, all: parsed.values.all === true };
  },
  /** With --all: every page, as one response without a next page. */
  async call(client, { request, all }, options) {
    const tasks: Task__Output[] = [];
    let page = await client.listTasks(request, options);
    tasks.push(...page.tasks);
    const seen = new Set<string>();
    while (all && page.nextPageToken) {
      if (seen.has(page.nextPageToken)) throw new Error('the broker returned the same page token twice; stopping');
      seen.add(page.nextPageToken);
      page = await client.listTasks({ ...request, pageToken: page.nextPageToken }, options);
      tasks.push(...page.tasks);
    }
    return { tasks, nextPageToken: all ? '' : page.nextPageToken };
  },
  render({ tasks, nextPageToken }, { request, all }, out, format) {
    if (tasks.length === 0) {
      out(request.pageToken ? 'no more tasks' : 'no tasks match');
      return;
    }
    printTaskTable(tasks, out, format);
    out('');
    out(`${plural(tasks.length, 'task', 'tasks')}${all ? '' : ' on this page'}`);
    if (nextPageToken) out(`more tasks: continue with --page-token ${nextPageToken} (same filters), or list them all with --all`);
  },
};

// ---------------------------------------------------------------------------------------------
// audit-trail

const auditTrailSpec: CommandSpec = {
  name: 'admin audit-trail',
  summary: "Print a task's audit events in order and check their hash chain (with --tree: its whole delegation tree's).",
  args: '[TASK_ID]',
  options: {
    ...taskOption('The task'),
    tree: {
      type: 'boolean',
      description:
        "The trail of the task's whole delegation tree: the events of its root and of every task delegated below it, in the order they were written, each with its task, and the check of each task's chain",
    },
    ...adminConnectionOptions,
  },
  notes:
    'A broken hash chain (an event changed, removed or reordered; with --tree, in any task of the tree) is reported on stderr and exits 1, also with --json.\n' +
    "With --tree, text output names each event's task by a short form (tsk_ and 8 characters) and lists the full IDs with their chain checks.\n" +
    "-o wide adds each actor's certificate thumbprint (and, for one task, each event's hash).\n" +
    ADMIN_EXIT_NOTES,
};

function checked(res: GetAuditTrailResponse__Output): CheckedTrail {
  return { ...res, chain: res.chain ?? { ok: false, events: 0, brokenAt: 0, problem: 'the broker returned no chain check' } };
}

/** The whole trail of a task's delegation tree, following page tokens; the chain checks are the last page's (the freshest). */
async function wholeTreeTrail(client: AdminClient, taskId: string, options: CallOptions): Promise<GetAuditTrailResponse__Output> {
  const page = (pageToken: string) =>
    unaryCall<GetAuditTrailResponse__Output>((md, opts, cb) => client.raw.GetAuditTrail({ taskId, tree: true, pageToken }, md, opts, cb), options);
  let last = await page('');
  const events = [...last.events];
  const seen = new Set<string>();
  while (last.nextPageToken) {
    // A token that comes back would page forever: the broker's answer is wrong, say so.
    if (seen.has(last.nextPageToken)) throw new Error('the broker returned the same page token twice; stopping');
    seen.add(last.nextPageToken);
    last = await page(last.nextPageToken);
    events.push(...last.events);
  }
  return { ...last, taskId, events, nextPageToken: '' };
}

const auditTrail: AdminCommandDef<{ taskId: string; tree: boolean }, CheckedTrail> = {
  spec: auditTrailSpec,
  rpc: 'GetAuditTrail',
  request: (parsed) => ({ taskId: taskArgument(auditTrailSpec, parsed), tree: parsed.values.tree === true }),
  call: async (client, { taskId, tree }, options) =>
    checked(tree ? await wholeTreeTrail(client, taskId, options) : await client.getWholeAuditTrail(taskId, options)),
  render: (res, { tree }, out, format) => (tree ? printTreeAuditTrail(res, out, format) : printAuditTrail(res, out, format)),
  /** A broken chain is shouted on stderr and exits 1, whatever the output format. */
  verdict({ taskId, rootTaskId, chain }, err, prefix) {
    if (chain.ok) return ExitCode.ok;
    const trail = rootTaskId ? `the audit trail of the delegation tree of ${rootTaskId}` : `the audit trail of ${taskId}`;
    err(
      `${prefix}: HASH CHAIN BROKEN: ${trail} has been tampered with or damaged at event #${chain.brokenAt}` +
        ` (${chain.problem || 'no detail given'}); ${chain.events} events checked. Do not trust this trail.\n`,
    );
    return ExitCode.failure;
  },
};

/** Prints a trail (text or JSON) as audit-trail does (a tree's when it names its root); a broken chain is shouted on stderr and exits 1. */
export function reportAuditTrail(res: GetAuditTrailResponse__Output, json: boolean, out: Out, err: Err, prefix = 'task-broker admin audit-trail'): number {
  return report(auditTrail, checked(res), { taskId: res.taskId, tree: res.rootTaskId !== '' }, json ? 'json' : 'table', out, err, prefix);
}

// ---------------------------------------------------------------------------------------------
// task-tree

const taskTreeSpec: CommandSpec = {
  name: 'admin task-tree',
  summary: 'Print the delegation tree a task belongs to: its root and every task delegated below it, depth first.',
  args: '[TASK_ID]',
  options: {
    ...taskOption('Any task of the tree'),
    ...adminConnectionOptions,
  },
  notes:
    'Each task is drawn below the task it was delegated from (├─ └─), with its state, owner SPIFFE ID, scopes and expiry ' +
    '(-o wide: also its action, audience and creation time); ' +
    'children in the order they were created. At most 10,000 tasks (a bigger tree is FAILED_PRECONDITION). The read is on your audit record.\n' +
    ADMIN_EXIT_NOTES,
};

const taskTree: AdminCommandDef<string, GetTaskTreeResponse__Output> = {
  spec: taskTreeSpec,
  rpc: 'GetTaskTree',
  request: (parsed) => taskArgument(taskTreeSpec, parsed),
  call: (client, taskId, options) => unaryCall<GetTaskTreeResponse__Output>((md, opts, cb) => client.raw.GetTaskTree({ taskId }, md, opts, cb), options),
  render: (res, taskId, out, format) => printTaskTree(res, taskId, out, format),
};

// ---------------------------------------------------------------------------------------------
// get-task

const getTaskSpec: CommandSpec = {
  name: 'admin get-task',
  summary: 'Show one task: its fields, its history (the state changes in its audit trail), its token counts and the check of its audit chain.',
  args: '[TASK_ID]',
  options: {
    ...taskOption('The task'),
    ...adminConnectionOptions,
  },
  notes:
    'The history lists each state change (created, approved, ended) with when, who and why; the tokens line counts the tokens issued and those still live. ' +
    "-o wide adds certificate thumbprints (the owner's, and each change's) and the task's place in its delegation tree. " +
    'A task past its expiry is shown EXPIRED (the read ends it, as any admin action would). The read is on your audit record.\n' +
    'A broken hash chain (the history cannot be trusted) is reported on stderr and exits 1, also with --json.\n' +
    ADMIN_EXIT_NOTES,
};

const getTask: AdminCommandDef<string, TaskBrokerAdminGetTaskResponse__Output> = {
  spec: getTaskSpec,
  rpc: 'GetTask',
  request: (parsed) => taskArgument(getTaskSpec, parsed),
  call: (client, taskId, options) => client.getTask(taskId, options),
  render: (res, taskId, out, format) => printTaskDetails(res, taskId, out, format),
  verdict({ task, chain }, err, prefix) {
    if (chain?.ok) return ExitCode.ok;
    err(
      `${prefix}: HASH CHAIN BROKEN: the audit trail of ${task?.taskId ?? 'the task'} has been tampered with or damaged` +
        `${chain ? ` at event #${chain.brokenAt} (${chain.problem || 'no detail given'})` : ' (the broker returned no chain check)'}. Do not trust this history.\n`,
    );
    return ExitCode.failure;
  },
};

// ---------------------------------------------------------------------------------------------
// approve-task, revoke-task, revoke-workload, rotate-signing-key

/**
 * `<verb>-task` (approve-task, revoke-task): one task changed by its RPC, with a free-text note
 * recorded in the task and its audit trail (`--comment`, `--reason`); the output is a headline and
 * the task as it now is.
 */
function taskChangeCommand<Res extends { task: Task__Output | null }>(
  verb: string,
  rpc: AdminRpc,
  command: {
    summary: string;
    note: { flag: string; description: string };
    /** An optional file whose contents (trimmed) go with the request, e.g. a token kept out of argv. */
    file?: { flag: string; description: string };
    call(client: AdminClient, taskId: string, note: string, options: CallOptions, fileText?: string): Promise<Res>;
    headline(response: Res, taskId: string): string;
  },
): AdminCommandDef<{ taskId: string; note: string; fileText?: string }, Res> {
  const spec: CommandSpec = {
    name: `admin ${verb}-task`,
    summary: command.summary,
    args: '[TASK_ID]',
    options: {
      ...taskOption(`The task to ${verb}`),
      [command.note.flag]: { type: 'string', placeholder: 'TEXT', description: command.note.description },
      ...(command.file ? { [command.file.flag]: { type: 'string' as const, placeholder: 'PATH', description: command.file.description } } : {}),
      ...adminConnectionOptions,
    },
    notes: ADMIN_EXIT_NOTES,
  };
  return {
    spec,
    rpc,
    request: (parsed) => {
      const path = command.file ? stringOption(parsed.values, command.file.flag) : undefined;
      return {
        taskId: taskArgument(spec, parsed),
        note: stringOption(parsed.values, command.note.flag) ?? '',
        ...(path !== undefined ? { fileText: readTextFile(spec, command.file!.flag, path) } : {}),
      };
    },
    call: (client, { taskId, note, fileText }, options) => command.call(client, taskId, note, options, fileText),
    render(res, { taskId }, out, format) {
      out(command.headline(res, taskId));
      printTaskFields(res.task, out, format);
    },
  };
}

function readTextFile(spec: CommandSpec, flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new UsageError(`--${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} ${seeHelp(spec.name)}`);
  }
}

const approveTask = taskChangeCommand<ApproveTaskResponse__Output>('approve', 'ApproveTask', {
  summary: 'Approve a PENDING_APPROVAL task: it becomes ACTIVE and its owner can get tokens. Nobody approves their own task.',
  note: { flag: 'comment', description: 'Why it is approved; recorded in the task and its audit trail' },
  file: {
    flag: 'approver-token-file',
    description: "A file holding the approving person's subject token (a JWT), for tasks whose rule names its approvers by claim (require_approval.approvers)",
  },
  call: (client, taskId, comment, options, approverToken) => client.approveTask(taskId, comment, { ...options, ...(approverToken ? { approverToken } : {}) }),
  headline: (res, taskId) => `approved ${taskId}: it is now ${res.task ? shortState(res.task.state) : 'ACTIVE'}`,
});

const revokeTask = taskChangeCommand<RevokeTaskResponse__Output>('revoke', 'RevokeTask', {
  summary: 'Revoke a live task (ACTIVE or PENDING_APPROVAL) and every token it produced.',
  note: { flag: 'reason', description: 'Why; recorded in the task and its audit trail' },
  call: (client, taskId, reason, options) => client.revokeTask(taskId, reason, options),
  headline: (res, taskId) => `revoked ${taskId}; tokens revoked with it: ${res.revokedTokens}`,
});

const revokeWorkloadSpec: CommandSpec = {
  name: 'admin revoke-workload',
  summary: 'Kill switch: revoke every live task, and so every token, of the workloads a selector matches, in one transaction.',
  options: {
    selector: {
      type: 'string',
      placeholder: 'SPIFFE_ID_OR_PATTERN',
      required: true,
      description: `The workloads: ${selectorHelp}, e.g. spiffe://example.org/ns/billing/**`,
    },
    reason: { type: 'string', placeholder: 'TEXT', description: 'Why; recorded in every revoked task and the audit trail' },
    'dry-run': {
      type: 'boolean',
      description:
        'Change nothing: show what would be revoked now (the tasks, the tasks delegated below them, their tokens and how many are live); recorded on your audit record as a dry run',
    },
    ...adminConnectionOptions,
  },
  notes: `Tasks delegated from a revoked task end with it (their tokens are counted with its own).\n${ADMIN_EXIT_NOTES}`,
};

export const revokeWorkload: AdminCommandDef<{ selector: string; reason: string; dryRun: boolean }, RevokeWorkloadResponse__Output> = {
  spec: revokeWorkloadSpec,
  rpc: 'RevokeWorkload',
  request: (parsed) => ({
    selector: requiredText(revokeWorkloadSpec, parsed, 'selector'),
    reason: stringOption(parsed.values, 'reason') ?? '',
    dryRun: parsed.values['dry-run'] === true,
  }),
  call: (client, { selector, reason, dryRun }, options) => client.revokeWorkload(selector, reason, { ...options, dryRun }),
  render(res, { selector }, out) {
    // What the broker did decides the text: one older than dry_run ignores it and revokes for real.
    if (res.dryRun) {
      if (res.revokedTasks === 0) {
        out(`dry run: no live tasks match ${selector}: nothing would be revoked (nothing was changed)`);
        return;
      }
      const below = res.descendantTasks > 0 ? `, and ${plural(res.descendantTasks, 'task', 'tasks')} delegated below them,` : '';
      out(
        `dry run: would revoke ${plural(res.revokedTasks, 'task', 'tasks')} of workloads matching ${selector}${below} ` +
          `with ${plural(res.revokedTokens, 'token', 'tokens')} (${res.liveTokens} live); nothing was changed:`,
      );
      for (const id of res.taskIds) out(`  ${id}`);
      return;
    }
    if (res.revokedTasks === 0) {
      out(`no live tasks matched ${selector}: nothing revoked`);
      return;
    }
    out(`revoked ${plural(res.revokedTasks, 'task', 'tasks')} and ${plural(res.revokedTokens, 'token', 'tokens')} of workloads matching ${selector}:`);
    for (const id of res.taskIds) out(`  ${id}`);
  },
  verdict(res, err, prefix, { dryRun }) {
    if (!dryRun || res.dryRun) return ExitCode.ok;
    err(
      `${prefix}: the broker ignored --dry-run (it predates it) and REVOKED ${plural(res.revokedTasks, 'task', 'tasks')} ` +
        `with ${plural(res.revokedTokens, 'token', 'tokens')}: upgrade every broker replica before using --dry-run\n`,
    );
    return ExitCode.failure;
  },
};

const rotateSigningKeySpec: CommandSpec = {
  name: 'admin rotate-signing-key',
  summary:
    'Add a new token signing key: in the JWKS at once (NEXT), signing after the pre-publication period, when the old key retires; ' +
    'the old key stays in the JWKS until every token it signed has expired.',
  options: {
    immediate: {
      type: 'boolean',
      description:
        'Emergency, for a compromised key: the new key signs at once, without pre-publication (verifiers that cached the key set must fetch it again), ' +
        'and a pending NEXT key is dropped. Recorded as such in the audit trail',
    },
    reason: { type: 'string', placeholder: 'TEXT', description: 'Why; recorded in the audit trail' },
    ...adminConnectionOptions,
  },
  notes:
    'While a NEXT key is waiting to activate, another rotation is refused (exit 5, FAILED_PRECONDITION, naming the key and when it activates) unless --immediate.\n' +
    ADMIN_EXIT_NOTES,
};

const rotateSigningKey: AdminCommandDef<{ immediate: boolean; reason: string }, RotateSigningKeyResponse__Output> = {
  spec: rotateSigningKeySpec,
  rpc: 'RotateSigningKey',
  request: (parsed) => ({ immediate: parsed.values.immediate === true, reason: stringOption(parsed.values, 'reason') ?? '' }),
  call: (client, request, options) => client.rotateSigningKey({ ...options, ...request }),
  render: (res, _request, out) => printRotation(res, out),
};

// ---------------------------------------------------------------------------------------------
// list-signing-keys

const listSigningKeys: AdminCommandDef<{ all: boolean }, ListSigningKeysResponse__Output> = {
  spec: {
    name: 'admin list-signing-keys',
    summary:
      'List the token signing keys in the JWKS, newest first: state (NEXT, ACTIVE, RETIRED), when each phase began, and until when each key is in the JWKS.',
    options: {
      all: { type: 'boolean', description: 'Also the retired keys no longer in the JWKS (at most 1,000 keys)' },
      ...adminConnectionOptions,
    },
    notes: `The read is on your audit record.\n${ADMIN_EXIT_NOTES}`,
  },
  rpc: 'ListSigningKeys',
  request: (parsed) => ({ all: parsed.values.all === true }),
  call: (client, { all }, options) => client.listSigningKeys({ ...options, all }),
  render: (res, _request, out) => printSigningKeys(res, out),
};

// ---------------------------------------------------------------------------------------------
// Registration

/** Every admin command, keyed by its full name, for main.ts. */
export const adminCommands: Record<string, AdminCommand> = Object.fromEntries(
  [
    adminCommand(listTasks),
    adminCommand(getTask),
    adminCommand(auditTrail),
    adminCommand(taskTree),
    adminCommand(approveTask),
    adminCommand(revokeTask),
    adminCommand(revokeWorkload),
    adminCommand(rotateSigningKey),
    adminCommand(listSigningKeys),
  ].map((c) => [c.spec.name, c]),
);
