/**
 * `task-broker admin …` end to end: the real binary against a real broker (`serve`, started
 * once from dev-ca files, a policy file and environment variables), with tasks made by
 * workloads through the SDK (delegation trees over DelegateTask). Covers every admin command in text and --json, paging, and the
 * exit codes scripts rely on (0 ok, 1 failure, 2 usage, 3 denied, 4 not found, 5 conflict).
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reportAuditTrail } from '../../src/cli/admin/commands.js';
import { BrokerClient, unaryCall } from '../../src/client/broker-client.js';
import { loadIssuedCertificate, mintX509Svid } from '../../src/devca/certificates.js';
import type { DelegateTaskResponse__Output } from '../../src/gen/taskbroker/v1/DelegateTaskResponse.js';
import type { GetAuditTrailResponse__Output } from '../../src/gen/taskbroker/v1/GetAuditTrailResponse.js';
import type { TaskSpec } from '../../src/gen/taskbroker/v1/TaskSpec.js';
import { fromTimestamp } from '../../src/protocol/timestamps.js';
import { cliTimeout, runCli, startCli, type CliResult, type RunningCli } from '../helpers/cli.js';
import { devCaServeEnv, devCaSvid } from '../helpers/dev-ca-files.js';
import { startFakeWorkloadApi, x509SvidMessage, type FakeWorkloadApi } from '../helpers/workload-api.js';

const BROKER_ID = 'spiffe://example.org/task-broker';
const ADMIN_ID = 'spiffe://example.org/ns/platform/sa/admin';
const WORKER_ID = 'spiffe://example.org/ns/demo/sa/worker';
const API_ID = 'spiffe://example.org/ns/demo/sa/api';
const REQUESTER_ID = 'spiffe://example.org/ns/ops/sa/requester';
const INTRUDER_ID = 'spiffe://example.org/ns/ops/sa/intruder';
const JOB_A_ID = 'spiffe://example.org/ns/batch/sa/job-a';
const JOB_B_ID = 'spiffe://example.org/ns/batch/sa/job-b';
const PLANNER_ID = 'spiffe://example.org/ns/agents/sa/planner';
const SQL_TOOL_ID = 'spiffe://example.org/ns/tools/sa/sql';
const FETCH_TOOL_ID = 'spiffe://example.org/ns/tools/sa/fetch';
const UNKNOWN_TASK = 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA';

const SVIDS: Record<string, string> = {
  broker: BROKER_ID,
  admin: ADMIN_ID,
  worker: WORKER_ID,
  api: API_ID,
  requester: REQUESTER_ID,
  intruder: INTRUDER_ID,
  'job-a': JOB_A_ID,
  'job-b': JOB_B_ID,
  planner: PLANNER_ID,
  'sql-tool': SQL_TOOL_ID,
  'fetch-tool': FETCH_TOOL_ID,
};

// The approval rule comes first: the first rule that allows a request wins.
const POLICY = `
version: 1
admins: [${ADMIN_ID}]
rules:
  - name: approval-required
    callers: { trust_domains: [example.org] }
    actions: ["needs.approval"]
    audiences: ["spiffe://example.org/**"]
    scopes: ["*"]
    require_approval: true
  - name: demo
    callers: { trust_domains: [example.org] }
    actions: ["*"]
    audiences: ["spiffe://example.org/**"]
    scopes: ["*"]
    delegation:
      to: ["spiffe://example.org/ns/tools/**"]
      max_depth: 2
`;

const ADMIN_COMMANDS = ['list-tasks', 'get-task', 'audit-trail', 'task-tree', 'approve-task', 'revoke-task', 'revoke-workload', 'rotate-signing-key'];

interface JsonTask {
  taskId: string;
  ownerSpiffeId: string;
  state: string;
  createdAt: string;
  expiresAt: string;
  approvedBy: string;
  spec: { action: string; audience: string };
}

let dir: string;
let pki: string;
let broker: RunningCli;
let address: string;
let httpPort: number;
const clients: BrokerClient[] = [];
let worker: BrokerClient;
let api: BrokerClient;
let requester: BrokerClient;
let adminWorkload: BrokerClient;
let jobA: BrokerClient;
let jobB: BrokerClient;
let planner: BrokerClient;
let sqlTool: BrokerClient;
let fetchTool: BrokerClient;

function adminEnv(): NodeJS.ProcessEnv {
  return {
    TASK_BROKER_ADDRESS: address,
    TASK_BROKER_ID: BROKER_ID,
    TASK_BROKER_ADMIN_SVID_CERT: join(pki, 'admin.pem'),
    TASK_BROKER_ADMIN_SVID_KEY: join(pki, 'admin.key'),
    TASK_BROKER_ADMIN_BUNDLE: join(pki, 'ca.pem'),
    // A call ends with its answer; the deadline only catches a hang. Below the CLI's own timeout,
    // so a stuck call is reported by the admin command (DEADLINE_EXCEEDED) on its stderr.
    TASK_BROKER_ADMIN_TIMEOUT: '60s',
  };
}

/** Runs `task-broker admin <args>` as the admin (configured through the environment). */
function admin(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCli(['admin', ...args], { env: { ...adminEnv(), ...env } });
}

/** The whole of stdout must be one JSON document. */
function jsonOf<T>(result: CliResult): T {
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as T;
}

async function client(name: string): Promise<BrokerClient> {
  const c = BrokerClient.withSvid(address, await devCaSvid(pki, name, BROKER_ID));
  clients.push(c);
  return c;
}

function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return { action: 'report.read', resources: ['reports/2026'], audience: API_ID, scopes: ['reports:read'], ttl: { seconds: 600 }, ...overrides };
}

async function newTask(owner: BrokerClient, overrides: Partial<TaskSpec> = {}): Promise<string> {
  const { task } = await owner.createTask({ spec: spec(overrides) });
  if (!task) throw new Error('CreateTask returned no task');
  return task.taskId;
}

async function delegate(owner: BrokerClient, parentTaskId: string, delegatee: string, scopes: string[]): Promise<string> {
  const res = await unaryCall<DelegateTaskResponse__Output>((md, opts, cb) =>
    owner.raw.DelegateTask({ parentTaskId, delegatee, spec: { scopes } }, md, opts, cb),
  );
  if (!res.task) throw new Error('DelegateTask returned no task');
  return res.task.taskId;
}

async function jwksKids(): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${httpPort}/.well-known/jwks.json`);
  const jwks = (await res.json()) as { keys: Array<{ kid: string }> };
  return jwks.keys.map((k) => k.kid);
}

// Steps: the dev-ca inits, the mints (each batch in parallel), the broker's two log lines.
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-admin-cli-'));
  pki = join(dir, 'pki');
  const rogue = join(dir, 'rogue-pki');
  const inits = await Promise.all([
    runCli(['dev-ca', 'init', '--dir', pki, '--trust-domain', 'example.org']),
    // A second CA claiming the same trust domain: its "admin" must not get in.
    runCli(['dev-ca', 'init', '--dir', rogue, '--trust-domain', 'example.org']),
  ]);
  for (const r of inits) expect(r.code, r.stderr).toBe(0);
  const mints = await Promise.all([
    ...Object.entries(SVIDS).map(([name, id]) => runCli(['dev-ca', 'mint', '--dir', pki, '--spiffe-id', id, '--name', name])),
    runCli(['dev-ca', 'mint', '--dir', rogue, '--spiffe-id', ADMIN_ID, '--name', 'admin']),
  ]);
  for (const r of mints) expect(r.code, r.stderr).toBe(0);
  await writeFile(join(dir, 'policy.yaml'), POLICY);

  broker = startCli(
    ['serve'],
    devCaServeEnv(pki, 'example.org', { TASK_BROKER_DATA_DIR: join(dir, 'data'), TASK_BROKER_MIGRATE: 'true', TASK_BROKER_POLICY: join(dir, 'policy.yaml') }),
  );
  const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
  const http = await broker.waitForLog((l) => l.msg === 'HTTP listening');
  address = `127.0.0.1:${String(listening.port)}`;
  httpPort = Number(http.port);

  [worker, api, requester, adminWorkload, jobA, jobB, planner, sqlTool, fetchTool] = await Promise.all([
    client('worker'),
    client('api'),
    client('requester'),
    client('admin'),
    client('job-a'),
    client('job-b'),
    client('planner'),
    client('sql-tool'),
    client('fetch-tool'),
  ]);
}, cliTimeout(4));

afterAll(async () => {
  for (const c of clients) c.close();
  if (broker) {
    broker.child.kill('SIGTERM');
    const code = await broker.exited;
    expect(code, broker.stderr()).toBe(0);
  }
  await rm(dir, { recursive: true, force: true });
}, cliTimeout(1));

describe('task-broker admin', () => {
  it('every admin command has --help, generated from its spec with the shared connection options', async () => {
    const results = await Promise.all(ADMIN_COMMANDS.map((c) => runCli(['admin', c, '--help'])));
    results.forEach((r, i) => {
      const name = ADMIN_COMMANDS[i] ?? '';
      expect(r.code, name).toBe(0);
      expect(r.stdout).toContain(`Usage: task-broker admin ${name} [options]`);
      for (const text of ['--broker HOST:PORT', 'env: TASK_BROKER_ADDRESS', 'default: 127.0.0.1:8443', '--broker-id SPIFFE_ID', 'env: TASK_BROKER_ID']) {
        expect(r.stdout, name).toContain(text);
      }
      for (const text of [
        'env: TASK_BROKER_ADMIN_SVID_CERT',
        'env: TASK_BROKER_ADMIN_SVID_KEY',
        'env: TASK_BROKER_ADMIN_BUNDLE',
        '--json',
        '-o, --output FORMAT',
        '--timeout DURATION',
        'Exit status',
      ]) {
        expect(r.stdout, name).toContain(text);
      }
    });
  });

  it('admin --help, admin -h and admin help list every admin command, one line each, and exit 0; an unknown command is one line, exit 2', async () => {
    const [help, h, helpWord, helpCommand, typo, unknown, bare, flagFirst] = await Promise.all([
      runCli(['admin', '--help']),
      runCli(['admin', '-h']),
      runCli(['admin', 'help']),
      runCli(['admin', 'help', 'get-task']),
      admin(['get-taks', '--task', UNKNOWN_TASK]),
      admin(['frobnicate']),
      runCli(['admin']),
      admin(['--json']),
    ]);
    for (const r of [help, h, helpWord]) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/^Usage: task-broker admin <command>/);
      for (const name of ADMIN_COMMANDS) expect(r.stdout).toMatch(new RegExp(`^ {2}${name} +\\S.*$`, 'm'));
      expect(r.stdout).toContain("Run 'task-broker admin <command> --help'");
    }
    expect(h.stdout).toBe(help.stdout);
    expect(helpCommand.code).toBe(0);
    expect(helpCommand.stdout).toContain('Usage: task-broker admin get-task [options] [TASK_ID]');

    expect(typo.code).toBe(2);
    expect(typo.stderr).toBe(
      `task-broker admin: unknown command "get-taks" (did you mean get-task?); run 'task-broker admin --help' for the list of commands\n`,
    );
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe(`task-broker admin: unknown command "frobnicate"; run 'task-broker admin --help' for the list of commands\n`);
    expect(flagFirst.code).toBe(2);
    expect(flagFirst.stderr).toMatch(/^task-broker admin: give a command before "--json"; run 'task-broker admin --help'/);
    for (const r of [typo, unknown, flagFirst]) expect(r.stdout).toBe('');
    // No command at all: the list, as a usage error.
    expect(bare.code).toBe(2);
    expect(bare.stdout).toBe(help.stdout);
  });

  it('missing or invalid flags exit 2 with a message, and so does a request the broker finds invalid', async () => {
    const [noTask, noBrokerId, badState, badSelector, badOutput, jsonAndWide, twoTasks] = await Promise.all([
      admin(['approve-task']),
      admin(['list-tasks'], { TASK_BROKER_ID: '' }),
      admin(['list-tasks', '--state', 'RUNNING']),
      admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/billing-*']),
      admin(['list-tasks', '-o', 'yaml']),
      admin(['get-task', UNKNOWN_TASK, '--json', '--output', 'wide']),
      admin(['revoke-task', '--task', UNKNOWN_TASK, 'tsk_BBBBBBBBBBBBBBBBBBBBBBBB', '--reason', 'x']),
    ]);
    const expectations: Array<[CliResult, RegExp]> = [
      [
        noTask,
        /^task-broker admin approve-task: --task is required \(or give the task ID as the argument\) \(see 'task-broker admin approve-task --help'\)\n$/,
      ],
      [noBrokerId, /^task-broker admin list-tasks: --broker-id is required \(or set TASK_BROKER_ID\)/],
      [badState, /--state must be one of PENDING_APPROVAL, ACTIVE, COMPLETED, CANCELLED, REVOKED, EXPIRED, got "RUNNING"/],
      // Checked by the broker: INVALID_ARGUMENT.
      [badSelector, /^task-broker admin revoke-workload: INVALID_ARGUMENT: selector: /],
      // One line each.
      [badOutput, /^task-broker admin list-tasks: -o\/--output must be one of table, wide, json, got "yaml" \(see 'task-broker admin list-tasks --help'\)\n$/],
      [jsonAndWide, /^task-broker admin get-task: --json and -o wide ask for different outputs: give one \(see 'task-broker admin get-task --help'\)\n$/],
      [
        twoTasks,
        new RegExp(
          `^task-broker admin revoke-task: --task ${UNKNOWN_TASK} and the argument tsk_B+ name different tasks: give one \\(see 'task-broker admin revoke-task --help'\\)\\n$`,
        ),
      ],
    ];
    for (const [result, message] of expectations) {
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(result.stdout).toBe('');
    }
  });

  it(
    'list-tasks prints a table or JSON, filters by owner, state and time, and pages with --page-size, --page-token and --all',
    { timeout: cliTimeout(2) },
    async () => {
      const ids: string[] = [];
      const created: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { task } = await worker.createTask({ spec: spec({ params: { fields: { n: { numberValue: i, kind: 'numberValue' } } } }) });
        ids.push(task?.taskId ?? '');
        created.push(fromTimestamp(task?.createdAt)?.toISOString() ?? '');
      }
      const newestFirst = [...ids].reverse();
      const completed = ids[1] ?? '';
      await worker.completeTask(completed, 'done');

      const [table, activeSince, completedByPattern, firstPage, all] = await Promise.all([
        admin(['list-tasks', '--owner', WORKER_ID]),
        // created_after is inclusive: the third task and the two after it, less the completed one (the second).
        admin(['list-tasks', '--owner', WORKER_ID, '--state', 'ACTIVE', '--created-after', created[2] ?? '', '--json']),
        admin(['list-tasks', '--owner', 'spiffe://example.org/ns/demo/**', '--state', 'completed', '--json']),
        admin(['list-tasks', '--owner', WORKER_ID, '--page-size', '2']),
        admin(['list-tasks', '--owner', WORKER_ID, '--page-size', '2', '--all', '--json']),
      ]);

      expect(table.code, table.stderr).toBe(0);
      const lines = table.stdout.split('\n');
      expect(lines[0]).toMatch(/^TASK ID +STATE +OWNER +AUDIENCE +ACTION +CREATED +EXPIRES$/);
      for (const [i, id] of newestFirst.entries()) {
        expect(lines[i + 1]).toMatch(
          new RegExp(
            `^${id} +${id === completed ? 'COMPLETED' : 'ACTIVE'} +${WORKER_ID} +${API_ID} +report\\.read +\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z +\\d{4}-`,
          ),
        );
      }
      expect(table.stdout).toContain('5 tasks on this page');
      expect(table.stdout).not.toContain('--page-token');

      const activeTasks = jsonOf<{ tasks: JsonTask[]; nextPageToken: string }>(activeSince);
      expect(activeTasks.tasks.map((t) => t.taskId)).toEqual(newestFirst.slice(0, 3));
      expect(activeTasks.tasks.every((t) => t.state === 'TASK_STATE_ACTIVE' && t.ownerSpiffeId === WORKER_ID)).toBe(true);
      expect(activeTasks.tasks[0]?.createdAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(activeTasks.tasks[0]?.spec).toMatchObject({ action: 'report.read', audience: API_ID, params: { n: 4 }, ttl: '600s' });
      expect(activeTasks.nextPageToken).toBe('');

      expect(jsonOf<{ tasks: JsonTask[] }>(completedByPattern).tasks.map((t) => t.taskId)).toEqual([completed]);

      expect(firstPage.code, firstPage.stderr).toBe(0);
      const firstRows = firstPage.stdout.split('\n').filter((l) => l.startsWith('tsk_'));
      expect(firstRows.map((l) => l.split(' ')[0])).toEqual(newestFirst.slice(0, 2));
      const token = /more tasks: continue with --page-token (\S+)/.exec(firstPage.stdout)?.[1];
      expect(token).toBeTruthy();
      const second = jsonOf<{ tasks: JsonTask[]; nextPageToken: string }>(
        await admin(['list-tasks', '--owner', WORKER_ID, '--page-size', '2', '--page-token', token ?? '', '--json']),
      );
      expect(second.tasks.map((t) => t.taskId)).toEqual(newestFirst.slice(2, 4));
      expect(second.nextPageToken).not.toBe('');

      const everything = jsonOf<{ tasks: JsonTask[]; nextPageToken: string }>(all);
      expect(everything.tasks.map((t) => t.taskId)).toEqual(newestFirst);
      expect(everything.nextPageToken).toBe('');
    },
  );

  it('approve-task moves a PENDING_APPROVAL task to ACTIVE, after which its owner can get a token', { timeout: cliTimeout(2) }, async () => {
    const taskId = await newTask(requester, { action: 'needs.approval' });
    expect((await requester.getTask(taskId)).task?.state).toBe('TASK_STATE_PENDING_APPROVAL');
    await expect(requester.issueToken({ taskId })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });

    const approved = await admin(['approve-task', '--task', taskId, '--comment', 'ticket OPS-1']);
    expect(approved.code, approved.stderr).toBe(0);
    expect(approved.stdout).toContain(`approved ${taskId}: it is now ACTIVE`);
    expect(approved.stdout).toMatch(/^state: +ACTIVE$/m);
    expect(approved.stdout).toMatch(new RegExp(`^approved by: +${ADMIN_ID}$`, 'm'));
    expect(approved.stdout).toMatch(/^approval comment: +ticket OPS-1$/m);
    expect(approved.stdout).toMatch(/^policy rule: +approval-required$/m);

    const task = (await requester.getTask(taskId)).task;
    expect(task).toMatchObject({ state: 'TASK_STATE_ACTIVE', approvedBy: ADMIN_ID, approvalComment: 'ticket OPS-1' });
    expect((await requester.issueToken({ taskId })).token).toMatch(/^ey/);

    // Approving it again: the task is no longer PENDING_APPROVAL.
    const again = await admin(['approve-task', '--task', taskId, '--json']);
    expect(again.code).toBe(5);
    expect(again.stderr).toBe(`task-broker admin approve-task: FAILED_PRECONDITION: task is ACTIVE, not PENDING_APPROVAL\n`);
    expect(again.stdout).toBe('');
  });

  it(
    'get-task shows a task with its history, tokens and chain (text, -o wide, -o json); approve-task, revoke-task and audit-trail take the task ID as their argument',
    { timeout: cliTimeout(4) },
    async () => {
      const taskId = await newTask(requester, { action: 'needs.approval' });
      const approved = await admin(['approve-task', taskId, '--comment', 'ticket OPS-2']);
      expect(approved.code, approved.stderr).toBe(0);
      expect(approved.stdout).toContain(`approved ${taskId}: it is now ACTIVE`);
      await requester.issueToken({ taskId });
      const owner = (await requester.whoAmI()).certThumbprint;

      const [text, json, wide, unknown, malformed, trail] = await Promise.all([
        admin(['get-task', taskId]),
        admin(['get-task', '--task', taskId, '-o', 'json']),
        // The flag and the argument may both be given when they name the same task.
        admin(['get-task', taskId, '--task', taskId, '--output', 'wide']),
        admin(['get-task', UNKNOWN_TASK]),
        admin(['get-task', 'nope']),
        admin(['audit-trail', taskId, '-o', 'wide']),
      ]);
      const time = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';

      expect(text.code, text.stderr).toBe(0);
      const lines = text.stdout.split('\n');
      expect(lines[0]).toBe(`task ${taskId}: ACTIVE`);
      expect(text.stdout).toMatch(new RegExp(`^owner: +${REQUESTER_ID}$`, 'm'));
      expect(text.stdout).toMatch(/^approval comment: +ticket OPS-2$/m);
      expect(text.stdout).toMatch(/^tokens: +1 issued, 1 live$/m);
      expect(text.stdout).toMatch(/^audit chain: +verified, 3 events$/m);
      expect(text.stdout).not.toContain('owner cert');
      expect(text.stdout).toContain('history: 2 state changes');
      expect(text.stdout).toMatch(/^SEQ +TIME +STATE +EVENT +BY +REASON$/m);
      expect(text.stdout).toMatch(new RegExp(`^#1 +${time} +PENDING_APPROVAL +task\\.created +${REQUESTER_ID} +-$`, 'm'));
      expect(text.stdout).toMatch(new RegExp(`^#2 +${time} +ACTIVE +task\\.approved +${ADMIN_ID} +ticket OPS-2$`, 'm'));

      const details = jsonOf<{
        task: JsonTask;
        history: Array<{ state: string; at: string; by: string; byCertThumbprint: string; event: string; reason: string; seq: number }>;
        tokensIssued: number;
        liveTokens: number;
        delegatedTasks: number;
        ownerCertThumbprint: string;
        chain: { ok: boolean; events: number };
      }>(json);
      expect(details.task).toMatchObject({ taskId, state: 'TASK_STATE_ACTIVE', approvedBy: ADMIN_ID });
      expect(details.history.map((h) => [h.seq, h.state, h.event, h.by, h.reason])).toEqual([
        [1, 'TASK_STATE_PENDING_APPROVAL', 'task.created', REQUESTER_ID, ''],
        [2, 'TASK_STATE_ACTIVE', 'task.approved', ADMIN_ID, 'ticket OPS-2'],
      ]);
      expect(details.history[0]).toMatchObject({ byCertThumbprint: owner, at: expect.stringMatching(new RegExp(`^${time}$`)) as unknown });
      expect(details).toMatchObject({ tokensIssued: 1, liveTokens: 1, delegatedTasks: 0, ownerCertThumbprint: owner, chain: { ok: true, events: 3 } });

      // Wide: the certificate thumbprints, and the task's place in its tree.
      expect(wide.code, wide.stderr).toBe(0);
      expect(wide.stdout).toMatch(new RegExp(`^owner cert: +${owner}$`, 'm'));
      expect(wide.stdout).toMatch(/^depth: +0$/m);
      expect(wide.stdout).toMatch(/^SEQ +TIME +STATE +EVENT +BY +BY CERT +REASON$/m);
      expect(wide.stdout).toMatch(new RegExp(`^#1 +${time} +PENDING_APPROVAL +task\\.created +${REQUESTER_ID} +${owner} +-$`, 'm'));
      expect(wide.stdout).toMatch(new RegExp(`^#2 +${time} +ACTIVE +task\\.approved +${ADMIN_ID} +[A-Za-z0-9_-]{43} +ticket OPS-2$`, 'm'));

      expect(unknown.code).toBe(4);
      expect(unknown.stderr).toBe('task-broker admin get-task: NOT_FOUND: task not found\n');
      expect(malformed.code).toBe(2);
      expect(malformed.stderr).toMatch(/^task-broker admin get-task: INVALID_ARGUMENT: /);
      for (const r of [unknown, malformed]) expect(r.stdout).toBe('');

      expect(trail.code, trail.stderr).toBe(0);
      expect(trail.stdout).toContain(`audit trail of ${taskId}: 3 events`);
      expect(trail.stdout).toMatch(/^SEQ +TIME +EVENT +ACTOR +ACTOR CERT +REQUEST ID +HASH +DETAILS$/m);
      expect(trail.stdout).toMatch(new RegExp(`^#1 +${time} +task\\.created +${REQUESTER_ID} +${owner} +\\S+ +\\S{12}… +\\{`, 'm'));

      const revoked = await admin(['revoke-task', taskId, '--reason', 'rotated out']);
      expect(revoked.code, revoked.stderr).toBe(0);
      expect(revoked.stdout).toContain(`revoked ${taskId}; tokens revoked with it: 1`);
      const after = await admin(['get-task', taskId]);
      expect(after.code, after.stderr).toBe(0);
      expect(after.stdout.split('\n')[0]).toBe(`task ${taskId}: REVOKED`);
      expect(after.stdout).toMatch(/^tokens: +1 issued, 0 live$/m);
      expect(after.stdout).toMatch(new RegExp(`^#4 +${time} +REVOKED +task\\.revoked +${ADMIN_ID} +rotated out$`, 'm'));
    },
  );

  it('audit-trail lists the events in order and verifies the hash chain', async () => {
    const taskId = await newTask(requester);
    await requester.issueToken({ taskId });
    await requester.completeTask(taskId, 'report sent');

    const [text, json] = await Promise.all([admin(['audit-trail', '--task', taskId]), admin(['audit-trail', '--task', taskId, '--json'])]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`audit trail of ${taskId}: 3 events`);
    expect(text.stdout).toMatch(/^SEQ +TIME +EVENT +ACTOR +REQUEST ID +DETAILS$/m);
    expect(text.stdout).toMatch(new RegExp(`^#1 +\\d{4}-\\S+Z +task\\.created +${REQUESTER_ID} `, 'm'));
    expect(text.stdout).toMatch(/^#2 +\S+ +token\.issued /m);
    expect(text.stdout).toMatch(/^#3 +\S+ +task\.completed .*report sent/m);
    expect(text.stdout).toMatch(/hash chain verified: 3 events/);

    const trail = jsonOf<{
      taskId: string;
      events: Array<{ seq: number; eventType: string; occurredAt: string; prevHash: string; hash: string }>;
      chain: { ok: boolean; events: number };
    }>(json);
    expect(trail.taskId).toBe(taskId);
    expect(trail.events.map((e) => [e.seq, e.eventType])).toEqual([
      [1, 'task.created'],
      [2, 'token.issued'],
      [3, 'task.completed'],
    ]);
    trail.events.slice(1).forEach((e, i) => expect(e.prevHash).toBe(trail.events[i]?.hash));
    expect(trail.events[0]?.occurredAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(trail.chain).toEqual({ ok: true, events: 3, brokenAt: 0, problem: '' });
  });

  it('a broken hash chain is reported loudly on stderr and exits 1, in text and in JSON', () => {
    // Event `seq` of the trail, hashed `h<seq>` and chained to `prevHash`.
    const event = (seq: number, eventType: string, prevHash: string) => ({
      seq,
      eventType,
      actorSpiffeId: WORKER_ID,
      actorCertThumbprint: 'x',
      requestId: `r${seq}`,
      occurredAt: { seconds: String(1_789_999_999 + seq), nanos: 0 },
      details: { fields: {} },
      prevHash,
      hash: `h${seq}`,
      taskId: UNKNOWN_TASK,
      traceId: '',
    });
    const res: GetAuditTrailResponse__Output = {
      taskId: UNKNOWN_TASK,
      nextAfterSeq: 0,
      events: [event(1, 'task.created', ''), event(2, 'task.completed', 'h1')],
      chain: { ok: false, events: 2, brokenAt: 2, problem: 'event hash does not match its content' },
      rootTaskId: '',
      chains: [],
      nextPageToken: '',
    };
    for (const json of [false, true]) {
      const out: string[] = [];
      let err = '';
      const code = reportAuditTrail(
        res,
        json,
        (l) => out.push(l),
        (t) => (err += t),
      );
      expect(code).toBe(1);
      expect(err).toMatch(/^task-broker admin audit-trail: HASH CHAIN BROKEN: .* at event #2 \(event hash does not match its content\)/);
      expect(err).toContain('Do not trust this trail');
      if (json) expect((JSON.parse(out.join('\n')) as { chain: { ok: boolean } }).chain.ok).toBe(false);
      else expect(out.join('\n')).toContain('HASH CHAIN BROKEN at event #2: event hash does not match its content');
    }
  });

  /** A → B → C over DelegateTask: the planner's task, delegated to the sql tool, which delegates to the fetch tool (who gets a token). */
  async function delegationTree(): Promise<{ a: string; b: string; c: string }> {
    const a = await newTask(planner, { scopes: ['reports:read', 'reports:write'] });
    const b = await delegate(planner, a, SQL_TOOL_ID, ['reports:read', 'reports:write']);
    const c = await delegate(sqlTool, b, FETCH_TOOL_ID, ['reports:read']);
    await fetchTool.issueToken({ taskId: c });
    return { a, b, c };
  }

  /** The short form the tree trail prints a task ID in. */
  const short = (taskId: string) => taskId.slice(0, 12);

  it('task-tree prints the delegation tree indented from any of its tasks (--task or the argument), or as JSON', { timeout: cliTimeout(2) }, async () => {
    const { a, b, c } = await delegationTree();
    // A second child of the root, after B's subtree: ├─ for B, └─ for it, │ below B.
    const d = await delegate(planner, a, FETCH_TOOL_ID, ['reports:write']);
    const [byFlag, byArgument, json, unknown, noTask, twoTasks] = await Promise.all([
      admin(['task-tree', '--task', c]),
      admin(['task-tree', b]),
      admin(['task-tree', d, '--json']),
      admin(['task-tree', UNKNOWN_TASK]),
      admin(['task-tree']),
      admin(['task-tree', '--task', a, b]),
    ]);
    const time = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';
    for (const [result, asked] of [
      [byFlag, c],
      [byArgument, b],
    ] as const) {
      expect(result.code, result.stderr).toBe(0);
      const lines = result.stdout.split('\n');
      expect(lines[0]).toBe(`delegation tree of ${a} (the tree ${asked} belongs to): 4 tasks`);
      expect(lines[2]).toMatch(/^TASK +STATE +OWNER +SCOPES +EXPIRES$/);
      expect(lines[3]).toMatch(new RegExp(`^${a} +ACTIVE +${PLANNER_ID} +reports:read reports:write +${time}$`));
      expect(lines[4]).toMatch(new RegExp(`^├─ ${b} +ACTIVE +${SQL_TOOL_ID} +reports:read reports:write +${time}$`));
      expect(lines[5]).toMatch(new RegExp(`^│  └─ ${c} +ACTIVE +${FETCH_TOOL_ID} +reports:read +${time}$`));
      expect(lines[6]).toMatch(new RegExp(`^└─ ${d} +ACTIVE +${FETCH_TOOL_ID} +reports:write +${time}$`));
      expect(lines.slice(7).join('')).toBe('');
    }

    const tree = jsonOf<{ rootTaskId: string; tasks: Array<JsonTask & { parentTaskId: string; rootTaskId: string; depth: number; delegators: string[] }> }>(
      json,
    );
    expect(tree.rootTaskId).toBe(a);
    expect(tree.tasks.map((t) => [t.taskId, t.parentTaskId, t.depth])).toEqual([
      [a, '', 0],
      [b, a, 1],
      [c, b, 2],
      [d, a, 1],
    ]);
    expect(tree.tasks[2]?.delegators).toEqual([SQL_TOOL_ID, PLANNER_ID]);

    expect(unknown.code).toBe(4);
    expect(unknown.stderr).toBe('task-broker admin task-tree: NOT_FOUND: task not found\n');
    expect(noTask.code).toBe(2);
    expect(noTask.stderr).toMatch(/--task is required \(or give the task ID as the argument\)/);
    expect(twoTasks.code).toBe(2);
    expect(twoTasks.stderr).toContain(`--task ${a} and the argument ${b} name different tasks`);
    for (const r of [unknown, noTask, twoTasks]) expect(r.stdout).toBe('');
  });

  it('-o wide adds columns to list-tasks and task-tree; -o json is --json', { timeout: cliTimeout(2) }, async () => {
    const { a, b, c } = await delegationTree();
    const [wideList, jsonList, oJsonList, wideTree] = await Promise.all([
      admin(['list-tasks', '--owner', FETCH_TOOL_ID, '-o', 'wide']),
      admin(['list-tasks', '--owner', PLANNER_ID, '--json']),
      admin(['list-tasks', '--owner', PLANNER_ID, '--output', 'json']),
      admin(['task-tree', c, '-o', 'wide']),
    ]);
    expect(wideList.code, wideList.stderr).toBe(0);
    const lines = wideList.stdout.split('\n');
    expect(lines[0]).toMatch(/^TASK ID +STATE +OWNER +AUDIENCE +ACTION +SCOPES +CREATED BY +RULE +HASH +CREATED +EXPIRES$/);
    // The delegated task: created by its delegator, under the root's rule; the hash shortened.
    expect(wideList.stdout).toMatch(
      new RegExp(`^${c} +ACTIVE +${FETCH_TOOL_ID} +${API_ID} +report\\.read +reports:read +${SQL_TOOL_ID} +demo +\\S{12}… +\\d{4}-`, 'm'),
    );

    expect(jsonList.code, jsonList.stderr).toBe(0);
    expect(oJsonList.stdout).toBe(jsonList.stdout);
    expect(jsonOf<{ tasks: JsonTask[] }>(oJsonList).tasks.map((t) => t.taskId)).toContain(a);

    expect(wideTree.code, wideTree.stderr).toBe(0);
    expect(wideTree.stdout).toMatch(/^TASK +STATE +OWNER +ACTION +AUDIENCE +SCOPES +CREATED +EXPIRES$/m);
    expect(wideTree.stdout).toMatch(
      new RegExp(`^└─ ${b} +ACTIVE +${SQL_TOOL_ID} +report\\.read +${API_ID} +reports:read reports:write +\\d{4}-\\S+Z +\\d{4}-\\S+Z$`, 'm'),
    );
  });

  it('audit-trail --tree prints the events of every task of the tree in the order they were written, and checks each chain', async () => {
    const { a, b, c } = await delegationTree();
    const [text, json] = await Promise.all([admin(['audit-trail', '--task', b, '--tree']), admin(['audit-trail', '--task', c, '--tree', '--json'])]);

    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`audit trail of the delegation tree of ${a}: 6 events of 3 tasks`);
    expect(text.stdout).toMatch(/^TASK +SEQ +TIME +EVENT +ACTOR +DETAILS$/m);
    const rows = text.stdout.split('\n').filter((l) => l.startsWith('tsk_'));
    const expected: Array<[string, number, string, string]> = [
      [a, 1, 'task.created', PLANNER_ID],
      [a, 2, 'task.delegated', PLANNER_ID],
      [b, 1, 'task.created', PLANNER_ID],
      [b, 2, 'task.delegated', SQL_TOOL_ID],
      [c, 1, 'task.created', SQL_TOOL_ID],
      [c, 2, 'token.issued', FETCH_TOOL_ID],
    ];
    expect(rows).toHaveLength(expected.length);
    expected.forEach(([task, seq, type, actor], i) => {
      expect(rows[i]).toMatch(new RegExp(`^${short(task)} +#${seq} +\\d{4}-\\S+Z +${type.replace('.', '\\.')} +${actor} +\\{`));
    });
    expect(rows[1]).toContain(`"child_task_id":"${b}"`);
    expect(rows[4]).toContain(`"parent_task_id":"${b}"`);
    // The chain checks name every task in full next to its short form.
    for (const task of [a, b, c]) expect(text.stdout).toMatch(new RegExp(`^ {2}${short(task)} +${task} +ok +2 events$`, 'm'));
    expect(text.stdout).toContain('hash chains verified: 3 tasks, 6 events');

    const trail = jsonOf<{
      taskId: string;
      rootTaskId: string;
      events: Array<{ taskId: string; seq: number; eventType: string }>;
      chains: Array<{ taskId: string; chain: { ok: boolean; events: number } }>;
      chain: { ok: boolean; events: number; brokenAt: number; problem: string };
      nextPageToken: string;
    }>(json);
    expect(trail).toMatchObject({ taskId: c, rootTaskId: a, nextPageToken: '' });
    expect(trail.events.map((e) => [e.taskId, e.seq, e.eventType])).toEqual(expected.map(([task, seq, type]) => [task, seq, type]));
    expect(trail.chains.map((x) => [x.taskId, x.chain.ok, x.chain.events])).toEqual([
      [a, true, 2],
      [b, true, 2],
      [c, true, 2],
    ]);
    expect(trail.chain).toEqual({ ok: true, events: 6, brokenAt: 0, problem: '' });
  });

  it('a broken chain in a tree trail is reported loudly, naming the task, and exits 1', () => {
    const [root, child] = ['tsk_rootAAAAAAAAAAAAAAAAAAAA', 'tsk_childBBBBBBBBBBBBBBBBBBB'];
    const event = (taskId: string, seq: number, eventType: string) => ({
      seq,
      eventType,
      actorSpiffeId: WORKER_ID,
      actorCertThumbprint: 'x',
      requestId: `r${seq}`,
      occurredAt: { seconds: String(1_789_999_999 + seq), nanos: 0 },
      details: { fields: {} },
      prevHash: '',
      hash: `h${seq}`,
      taskId,
      traceId: '',
    });
    const res: GetAuditTrailResponse__Output = {
      taskId: child,
      nextAfterSeq: 0,
      events: [event(root, 1, 'task.created'), event(root, 2, 'task.delegated'), event(child, 1, 'task.created')],
      chain: { ok: false, events: 3, brokenAt: 1, problem: `task ${child}: event 1 was altered: its content does not match its hash` },
      rootTaskId: root,
      chains: [
        { taskId: root, chain: { ok: true, events: 2, brokenAt: 0, problem: '' } },
        { taskId: child, chain: { ok: false, events: 1, brokenAt: 1, problem: 'event 1 was altered: its content does not match its hash' } },
      ],
      nextPageToken: '',
    };
    const out: string[] = [];
    let err = '';
    expect(
      reportAuditTrail(
        res,
        false,
        (l) => out.push(l),
        (t) => (err += t),
      ),
    ).toBe(1);
    expect(err).toMatch(
      new RegExp(
        `^task-broker admin audit-trail: HASH CHAIN BROKEN: the audit trail of the delegation tree of ${root} .* at event #1 \\(task ${child}: event 1 was altered`,
      ),
    );
    const text = out.join('\n');
    expect(text).toMatch(new RegExp(`^ {2}tsk_childBBB +${child} +BROKEN +at event #1: event 1 was altered`, 'm'));
    expect(text).toMatch(new RegExp(`^ {2}tsk_rootAAAA +${root} +ok +2 events$`, 'm'));
    expect(text).toContain(`HASH CHAIN BROKEN: task ${child}: event 1 was altered`);
  });

  it(
    'revoke-task ends a live task and its tokens: the token then verifies as REVOKED; revoking it again is a conflict',
    { timeout: cliTimeout(2) },
    async () => {
      const taskId = await newTask(requester);
      const { token } = await requester.issueToken({ taskId });
      const presenterCertThumbprint = (await requester.whoAmI()).certThumbprint;
      expect((await api.verifyToken({ token, presenterCertThumbprint })).valid).toBe(true);

      const revoked = await admin(['revoke-task', '--task', taskId, '--reason', 'compromised host']);
      expect(revoked.code, revoked.stderr).toBe(0);
      expect(revoked.stdout).toContain(`revoked ${taskId}; tokens revoked with it: 1`);
      expect(revoked.stdout).toMatch(/^state: +REVOKED$/m);
      expect(revoked.stdout).toMatch(new RegExp(`^ended by: +${ADMIN_ID}$`, 'm'));
      expect(revoked.stdout).toMatch(/^end reason: +compromised host$/m);

      const verified = await api.verifyToken({ token, presenterCertThumbprint });
      expect(verified).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED' });
      expect((await requester.getTask(taskId)).task?.state).toBe('TASK_STATE_REVOKED');

      const again = await admin(['revoke-task', '--task', taskId, '--json']);
      expect(again.code).toBe(5);
      expect(again.stderr).toBe('task-broker admin revoke-task: FAILED_PRECONDITION: task is already REVOKED\n');
      expect(again.stdout).toBe('');
    },
  );

  it('revoke-workload revokes every live task of the workloads a pattern selects, and nothing else', { timeout: cliTimeout(2) }, async () => {
    const a1 = await newTask(jobA);
    const a2 = await newTask(jobA);
    const { token } = await jobA.issueToken({ taskId: a1 });
    const b1 = await newTask(jobB);
    const bPending = await newTask(jobB, { action: 'needs.approval' });
    const bDone = await newTask(jobB);
    await jobB.completeTask(bDone, 'done');
    const bystander = await newTask(requester);
    const presenter = (await jobA.whoAmI()).certThumbprint;

    // A dry run first: what would go, and nothing goes.
    const [dryText, dryJson] = await Promise.all([
      admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/batch/**', '--reason', 'incident 7', '--dry-run']),
      admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/batch/**', '--dry-run', '-o', 'json']),
    ]);
    expect(dryText.code, dryText.stderr).toBe(0);
    expect(dryText.stdout.split('\n')[0]).toBe(
      'dry run: would revoke 4 tasks of workloads matching spiffe://example.org/ns/batch/** with 1 token (1 live); nothing was changed:',
    );
    const wouldGo = dryText.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.trim())
      .filter(Boolean);
    expect(wouldGo.sort()).toEqual([a1, a2, b1, bPending].sort());
    const dry = jsonOf<{ taskIds: string[] }>(dryJson);
    expect(dry).toMatchObject({ dryRun: true, revokedTasks: 4, revokedTokens: 1, liveTokens: 1, descendantTasks: 0 });
    expect(dry.taskIds.sort()).toEqual(wouldGo);
    for (const [owner, id, state] of [
      [jobA, a1, 'TASK_STATE_ACTIVE'],
      [jobA, a2, 'TASK_STATE_ACTIVE'],
      [jobB, b1, 'TASK_STATE_ACTIVE'],
      [jobB, bPending, 'TASK_STATE_PENDING_APPROVAL'],
    ] as const) {
      expect((await owner.getTask(id)).task?.state, id).toBe(state);
    }
    expect(await api.verifyToken({ token, presenterCertThumbprint: presenter })).toMatchObject({ valid: true });
    const untouched = jsonOf<{ events: Array<{ eventType: string }> }>(await admin(['audit-trail', a1, '--json']));
    expect(untouched.events.map((e) => e.eventType)).not.toContain('task.revoked');

    const result = await admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/batch/**', '--reason', 'incident 7']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.split('\n')[0]).toBe('revoked 4 tasks and 1 token of workloads matching spiffe://example.org/ns/batch/**:');
    const listed = result.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.trim())
      .filter(Boolean);
    expect(listed.sort()).toEqual([a1, a2, b1, bPending].sort());

    for (const [owner, id] of [
      [jobA, a1],
      [jobA, a2],
      [jobB, b1],
      [jobB, bPending],
    ] as const) {
      expect((await owner.getTask(id)).task).toMatchObject({ state: 'TASK_STATE_REVOKED', endReason: 'incident 7', endedBy: ADMIN_ID });
    }
    expect((await jobB.getTask(bDone)).task?.state).toBe('TASK_STATE_COMPLETED');
    expect((await requester.getTask(bystander)).task?.state).toBe('TASK_STATE_ACTIVE');
    expect(await api.verifyToken({ token })).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED' });

    // Nothing live is left to revoke.
    expect(jsonOf(await admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/batch/**', '--json']))).toEqual({
      revokedTasks: 0,
      revokedTokens: 0,
      taskIds: [],
      dryRun: false,
      liveTokens: 0,
      descendantTasks: 0,
    });
    const nothing = await admin(['revoke-workload', '--selector', 'spiffe://example.org/ns/batch/**', '--dry-run']);
    expect(nothing.stdout).toBe('dry run: no live tasks match spiffe://example.org/ns/batch/**: nothing would be revoked (nothing was changed)\n');
  });

  it('rotate-signing-key publishes a NEXT key next to the active one; --immediate makes a new key active at once', { timeout: cliTimeout(2) }, async () => {
    const before = await jwksKids();
    const rotated = jsonOf<{ kid: string; retiredKid: string; state: string }>(await admin(['rotate-signing-key', '--json']));
    expect(rotated.state).toBe('SIGNING_KEY_STATE_NEXT');
    expect(before).not.toContain(rotated.kid);
    expect(before).toContain(rotated.retiredKid);
    const after = await jwksKids();
    expect(after).toEqual(expect.arrayContaining([rotated.kid, rotated.retiredKid]));

    // (The scheduled path, the refusal while a key is pending and list-signing-keys: test/cli/signing-keys-cli.test.ts.)
    const text = await admin(['rotate-signing-key', '--immediate']);
    expect(text.code, text.stderr).toBe(0);
    const kid = /^new signing key: +(\S+)$/m.exec(text.stdout)?.[1] ?? '';
    expect(text.stdout).toMatch(new RegExp(`^retired key: +${rotated.retiredKid} `, 'm'));
    expect(text.stdout).toMatch(new RegExp(`^discarded key: +${rotated.kid} `, 'm'));
    expect(await jwksKids()).toContain(kid);
    // Tokens are signed with the new key from now on.
    const taskId = await newTask(requester);
    const { token } = await requester.issueToken({ taskId });
    expect((JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString()) as { kid: string }).kid).toBe(kid);
  });

  it('exit codes: 3 denied, 4 not found, 1 unreachable or unusable (5 and 2: see above)', async () => {
    const active = await newTask(requester);
    const own = await newTask(adminWorkload, { action: 'needs.approval' });
    const [intruder, rogue, selfApproval, unknownTrail, unknownRevoke, unreachable, wrongBroker, unreadable] = await Promise.all([
      admin(['list-tasks', '--svid-cert', join(pki, 'intruder.pem'), '--svid-key', join(pki, 'intruder.key')]),
      admin(['revoke-workload', '--selector', 'spiffe://example.org/**'], {
        TASK_BROKER_ADMIN_SVID_CERT: join(dir, 'rogue-pki', 'admin.pem'),
        TASK_BROKER_ADMIN_SVID_KEY: join(dir, 'rogue-pki', 'admin.key'),
      }),
      admin(['approve-task', '--task', own]),
      admin(['audit-trail', '--task', UNKNOWN_TASK]),
      admin(['revoke-task', '--task', UNKNOWN_TASK, '--json']),
      // Refused at once (UNAVAILABLE); the --timeout only catches a hang, and is still parsed.
      admin(['list-tasks', '--broker', '127.0.0.1:1', '--timeout', '45s']),
      admin(['list-tasks', '--broker-id', 'spiffe://example.org/not-the-broker', '--timeout', '45s']),
      admin(['rotate-signing-key', '--svid-cert', join(dir, 'no-such.pem')]),
    ]);
    const expectations: Array<[CliResult, number, RegExp]> = [
      [intruder, 3, /^task-broker admin list-tasks: PERMISSION_DENIED: ListTasks is for admins only\n$/],
      [rogue, 3, /^task-broker admin revoke-workload: UNAUTHENTICATED: /],
      [selfApproval, 3, /^task-broker admin approve-task: PERMISSION_DENIED: an approver cannot approve their own task\n$/],
      [unknownTrail, 4, /^task-broker admin audit-trail: NOT_FOUND: task not found\n$/],
      [unknownRevoke, 4, /^task-broker admin revoke-task: NOT_FOUND: task not found\n$/],
      [unreachable, 1, /^task-broker admin list-tasks: UNAVAILABLE: cannot reach the broker at 127\.0\.0\.1:1: connection refused .*check --broker\)\n$/],
      [wrongBroker, 1, /^task-broker admin list-tasks: UNAVAILABLE: .*expected spiffe:\/\/example\.org\/not-the-broker/],
      [unreadable, 1, /^task-broker admin rotate-signing-key: cannot read --svid-cert .*no-such\.pem/],
    ];
    for (const [result, code, message] of expectations) {
      expect(result.code, result.stderr).toBe(code);
      expect(result.stderr).toMatch(message);
      expect(result.stdout).toBe('');
    }
    // Neither the intruder nor the rogue CA's "admin" changed anything.
    expect((await requester.getTask(active)).task?.state).toBe('TASK_STATE_ACTIVE');
    expect((await adminWorkload.getTask(own)).task?.state).toBe('TASK_STATE_PENDING_APPROVAL');
  });
});

describe('task-broker admin on the SPIFFE Workload API', () => {
  /** A fake SPIRE agent handing out a fresh admin SVID from the dev-ca, with the dev-ca as the bundle. */
  async function adminAgent(): Promise<FakeWorkloadApi> {
    const ca = await loadIssuedCertificate(await readFile(join(pki, 'ca.pem'), 'utf8'), await readFile(join(pki, 'ca.key'), 'utf8'));
    const agent = await startFakeWorkloadApi(join(dir, `agent-${Date.now()}.sock`));
    agent.setX509Svid({ svids: [await x509SvidMessage(await mintX509Svid(ca, ADMIN_ID), [ca])] });
    return agent;
  }

  /** The admin's environment without any SVID files (and no SPIFFE_ENDPOINT_SOCKET unless given). */
  const noFiles = { TASK_BROKER_ADMIN_SVID_CERT: '', TASK_BROKER_ADMIN_SVID_KEY: '', TASK_BROKER_ADMIN_BUNDLE: '', SPIFFE_ENDPOINT_SOCKET: '' };

  it('takes the admin SVID from --workload-api, or from SPIFFE_ENDPOINT_SOCKET when no SVID files are given', async () => {
    const agent = await adminAgent();
    try {
      const taskId = await newTask(requester);
      const [byFlag, byEnv, help] = await Promise.all([
        admin(['list-tasks', '--owner', REQUESTER_ID, '--json', '--workload-api', agent.address], noFiles),
        admin(['audit-trail', '--task', taskId, '--json'], { ...noFiles, SPIFFE_ENDPOINT_SOCKET: agent.address }),
        runCli(['admin', 'list-tasks', '--help']),
      ]);
      expect(jsonOf<{ tasks: JsonTask[] }>(byFlag).tasks.map((t) => t.taskId)).toContain(taskId);
      expect(jsonOf<{ taskId: string }>(byEnv).taskId).toBe(taskId);
      // Both went through the agent, with the Workload API's security header.
      expect(agent.opened.FetchX509SVID).toBe(2);
      expect(help.stdout).toMatch(/--workload-api ADDRESS +Take your X509-SVID and the trust bundles from the SPIFFE Workload API/);
      expect(help.stdout).toContain('SPIFFE_ENDPOINT_SOCKET is used when it is set');
    } finally {
      await agent.stop();
    }
  });

  it('refuses --workload-api with SVID files, no identity at all, and an agent that sends no SVID in time', async () => {
    const silent = await startFakeWorkloadApi(join(dir, 'silent.sock'));
    try {
      const [both, neither, badAddress, noSvid] = await Promise.all([
        admin(['list-tasks', '--workload-api', silent.address]),
        admin(['list-tasks'], noFiles),
        admin(['list-tasks'], { ...noFiles, SPIFFE_ENDPOINT_SOCKET: 'tcp://localhost:1' }),
        admin(['list-tasks', '--workload-api', silent.address, '--timeout', '300ms'], noFiles),
      ]);
      const expectations: Array<[CliResult, number, RegExp]> = [
        [both, 2, /--workload-api cannot be combined with --svid-cert, --svid-key/],
        [neither, 2, /give your X509-SVID: --svid-cert and --svid-key \(with --bundle\), or --workload-api ADDRESS \(or set SPIFFE_ENDPOINT_SOCKET\)/],
        [badAddress, 2, /--workload-api \(SPIFFE_ENDPOINT_SOCKET\): .*IP address, not a host name/],
        [noSvid, 1, /no usable X509-SVID from the Workload API at unix:\/\/.*silent\.sock within 300 ms/],
      ];
      for (const [result, code, message] of expectations) {
        expect(result.code, result.stderr).toBe(code);
        expect(result.stderr).toMatch(message);
        expect(result.stdout).toBe('');
      }
    } finally {
      await silent.stop();
    }
  });
});
