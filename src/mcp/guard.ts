/**
 * MCP Tasks guarded by the task broker.
 *
 * A task-augmented tools/call becomes a broker task created for the requester (the MCP client's
 * SPIFFE ID, or the principal of its bearer token) with this MCP server as its gateway; the
 * task's spec commits to the tool (action), this server (audience) and the SHA-256 of the
 * arguments' canonical JSON. Every tasks/get, tasks/result, tasks/list and tasks/cancel is then
 * a broker call naming the requester: the broker checks it against the task's owner and the
 * policy at request time and writes it to its audit trail. Nothing requester-facing is answered
 * from this process's memory, so a restart, a second replica or an outage cannot leak or forge a
 * task's state: without the broker the answer is an error.
 *
 *   const guard = guardMcpTasks({ broker, audience: 'spiffe://example.org/ns/mcp/sa/mcp-server', scopes: ['reports:write'] });
 *   const server = new McpServer({ name, version }, guard.serverOptions());
 *   guard.registerToolTask(server, 'report.generate', { inputSchema }, async (args, work) => { … });
 *   guard.install(server);
 */
import type { McpServer, RegisteredTool } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { ServerOptions } from '@modelcontextprotocol/sdk/server/index.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { ToolTaskHandler } from '@modelcontextprotocol/sdk/experimental/tasks/interfaces.js';
import type { AnySchema, SchemaOutput, ShapeOutput, ZodRawShapeCompat } from '@modelcontextprotocol/sdk/server/zod-compat.js';
import {
  CallToolRequestSchema,
  CancelTaskRequestSchema,
  ErrorCode,
  GetTaskPayloadRequestSchema,
  GetTaskRequestSchema,
  ListTasksRequestSchema,
  McpError,
  RELATED_TASK_META_KEY,
  type CallToolResult,
  type CreateTaskResult,
  type Task as McpTask,
  type ToolAnnotations,
} from '@modelcontextprotocol/sdk/types.js';
import type { IssueTokenOptions, TaskBrokerClient } from '../client/task-broker-client.js';
import type { IssuedToken, Task, TaskResult } from '../client/results.js';
import { isLive, type JsonObject, type Requester } from '../model/task.js';
import { randomUUID } from 'node:crypto';
import { TaskBrokerError } from '../client/errors.js';
import { argumentsSha256 } from './arguments-hash.js';
import { isBrokerBusy, isBrokerUnavailable, mcpErrorOf, noRequester } from './errors.js';
import { LocalTasks, type AbortReason, type RunningWork } from './local-tasks.js';
import { requesterOf } from './requester.js';
import { mcpTaskOf } from './task-status.js';
import { waitForChange } from './wait.js';

/** The broker calls the guard makes (a TaskBrokerClient has them all). */
export type GuardBroker = Pick<TaskBrokerClient, 'createTask' | 'readTask' | 'cancelTask' | 'completeTask' | 'listOwnTasks' | 'issueToken'>;

export interface GuardOptions {
  /** A client for the broker presenting this MCP server's own SVID (the gateway). */
  broker: GuardBroker;
  /** This MCP server's SPIFFE ID: the audience of the tasks, and of the tokens their works get. */
  audience: string;
  /** The scopes of a task unless its tool says otherwise. */
  scopes: string[];
  /** A task's lifetime when the requester asks for none (default 10 min). */
  defaultTtlMs?: number;
  /** The longest lifetime a requester may ask for (default 1 h); longer asks are cut to it. */
  maxTtlMs?: number;
  /** The pollInterval the tasks advertise, and the first re-check of a blocked tasks/result (default 1 s). */
  pollIntervalMs?: number;
  /** The longest pause between re-checks of a blocked tasks/result (default 30 s). */
  maxRecheckMs?: number;
  /** How many works may run at once in this process (default 100); more are refused, retry later. */
  maxConcurrentWorks?: number;
  /** The deadline of each broker call (default 5 s). */
  brokerDeadlineMs?: number;
  /** Told about what no request is waiting for: a result the broker could not be given. */
  onError?: (err: unknown, taskId: string) => void;
}

/** What a tool's work gets besides its arguments. */
export interface ToolTaskContext {
  /** The broker task (and MCP task) ID. */
  taskId: string;
  /** The broker task as created. */
  task: Task;
  /** Aborted when the requester cancels, the task's ttl elapses or the server shuts down; the reason says which. */
  signal: AbortSignal;
  /** Who asked (AuthInfo.clientId is the SPIFFE ID of an mTLS requester). */
  authInfo: AuthInfo | undefined;
  /** A token of the task for a downstream call: sub = requester, act = this server, bound to its certificate. */
  issueToken(options?: IssueTokenOptions): Promise<IssuedToken>;
}

type ArgsOf<S> = S extends ZodRawShapeCompat ? ShapeOutput<S> : S extends AnySchema ? SchemaOutput<S> : undefined;

export interface GuardedToolConfig<S extends ZodRawShapeCompat | AnySchema | undefined> {
  title?: string;
  description?: string;
  inputSchema?: S;
  outputSchema?: ZodRawShapeCompat | AnySchema;
  annotations?: ToolAnnotations;
  _meta?: Record<string, unknown>;
  /** The task's scopes (default: the guard's). */
  scopes?: string[];
  /** The task's resources, from the arguments (default: none). */
  resources?: (args: ArgsOf<S>) => string[];
}

export type ToolTaskWork<S extends ZodRawShapeCompat | AnySchema | undefined> = (args: ArgsOf<S>, work: ToolTaskContext) => Promise<CallToolResult>;

interface GuardedTool {
  name: string;
  scopes: string[];
  resources: ((args: unknown) => string[]) | undefined;
  work: (args: unknown, work: ToolTaskContext) => Promise<CallToolResult>;
}

type RequestHandler = (request: unknown, extra: unknown) => Promise<unknown>;

export class McpTaskGuard {
  readonly #broker: GuardBroker;
  readonly #audience: string;
  readonly #scopes: string[];
  readonly #defaultTtlMs: number;
  readonly #maxTtlMs: number;
  readonly #pollIntervalMs: number;
  readonly #maxRecheckMs: number;
  readonly #maxWorks: number;
  readonly #deadlineMs: number;
  readonly #onError: (err: unknown, taskId: string) => void;
  readonly #local: LocalTasks;
  /** Servers whose tools/call is wrapped already (once per server). */
  readonly #wrapped = new WeakSet<McpServer>();
  /** Servers whose tasks/* handlers are the guard's already. */
  readonly #installed = new WeakSet<McpServer>();
  /** A failed task creation, by the signal of its tools/call, so the wrapper can answer with it (see #wrapToolsCall). */
  readonly #creationFailures = new WeakMap<AbortSignal, McpError>();
  /** Task creations under way (asked of the broker, no work started yet): close() waits for them. */
  readonly #creations = new Set<Promise<unknown>>();
  #closed = false;

  constructor(options: GuardOptions) {
    this.#broker = options.broker;
    this.#audience = options.audience;
    this.#scopes = options.scopes;
    this.#defaultTtlMs = options.defaultTtlMs ?? 600_000;
    this.#maxTtlMs = options.maxTtlMs ?? 3_600_000;
    this.#pollIntervalMs = options.pollIntervalMs ?? 1_000;
    this.#maxRecheckMs = options.maxRecheckMs ?? 30_000;
    this.#maxWorks = options.maxConcurrentWorks ?? 100;
    this.#deadlineMs = options.brokerDeadlineMs ?? 5_000;
    this.#onError = options.onError ?? (() => undefined);
    this.#local = new LocalTasks();
  }

  /**
   * The TaskStore to give the McpServer (ServerOptions.taskStore). It serves the SDK's internal
   * calls only; install() replaces every requester-facing tasks/* handler the SDK builds on it.
   */
  get taskStore(): LocalTasks {
    return this.#local;
  }

  /** How many works run now. */
  get runningWorks(): number {
    return this.#local.size;
  }

  /** ServerOptions for an McpServer with guarded tasks: the tasks capability and the task store. */
  serverOptions(options: ServerOptions = {}): ServerOptions {
    return {
      ...options,
      capabilities: {
        ...options.capabilities,
        tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } },
      },
      taskStore: this.#local,
    };
  }

  /**
   * Replaces the SDK's tasks/get, tasks/result, tasks/list and tasks/cancel handlers of `server`
   * with ones that ask the broker for the requester of each request. The server must have been
   * built with the tasks capability and this guard's taskStore (serverOptions()). registerToolTask
   * does it too; calling it again changes nothing.
   */
  install(server: McpServer): void {
    if (this.#installed.has(server)) return;
    this.#installed.add(server);
    const s = server.server;
    s.setRequestHandler(GetTaskRequestSchema, async (request, extra) => {
      const requester = this.#requester(extra.authInfo);
      const { task } = await this.#read(request.params.taskId, 'poll', requester);
      return this.#view(task);
    });
    s.setRequestHandler(GetTaskPayloadRequestSchema, async (request, extra) => {
      const requester = this.#requester(extra.authInfo);
      return this.#awaitResult(request.params.taskId, requester, extra.signal);
    });
    s.setRequestHandler(ListTasksRequestSchema, async (request, extra) => {
      const requester = this.#requester(extra.authInfo);
      const cursor = request.params?.cursor;
      const page = await this.#broker
        .listOwnTasks({ onBehalfOf: requester, deadlineMs: this.#deadlineMs, ...(cursor ? { pageToken: cursor } : {}) })
        .catch((err: unknown) => {
          throw mcpErrorOf(err);
        });
      return { tasks: page.tasks.map((t) => this.#view(t)), ...(page.nextPageToken ? { nextCursor: page.nextPageToken } : {}) };
    });
    s.setRequestHandler(CancelTaskRequestSchema, async (request, extra) => {
      const requester = this.#requester(extra.authInfo);
      const { taskId } = request.params;
      const ended = await this.#broker
        .cancelTask(taskId, 'cancelled by the requester (MCP tasks/cancel)', { onBehalfOf: requester, deadlineMs: this.#deadlineMs })
        .catch((err: unknown) => {
          throw mcpErrorOf(err, taskId);
        });
      this.#local.abort(taskId, 'cancelled');
      return this.#view(ended.task);
    });
  }

  /**
   * Registers `name` on `server` as a task-only tool (taskSupport 'required') whose calls are
   * broker tasks and whose `work` runs in the background of this process.
   */
  registerToolTask<S extends ZodRawShapeCompat | AnySchema | undefined = undefined>(
    server: McpServer,
    name: string,
    config: GuardedToolConfig<S>,
    work: ToolTaskWork<S>,
  ): RegisteredTool {
    const { scopes, resources, ...toolConfig } = config;
    const tool: GuardedTool = {
      name,
      scopes: scopes ?? this.#scopes,
      resources: resources as GuardedTool['resources'],
      work: work as GuardedTool['work'],
    };
    const handler: ToolTaskHandler<AnySchema> = {
      createTask: async (args, extra) => {
        try {
          return await this.#createTask(tool, args, extra.authInfo, extra.taskRequestedTtl);
        } catch (err) {
          const failure = mcpErrorOf(err);
          this.#creationFailures.set(extra.signal, failure);
          throw failure;
        }
      },
      getTask: async (_args, extra) => this.#view((await this.#read(extra.taskId, 'poll', this.#requester(extra.authInfo))).task),
      getTaskResult: async (_args, extra) => this.#awaitResult(extra.taskId, this.#requester(extra.authInfo), extra.signal),
    };
    const registered = server.experimental.tasks.registerToolTask(
      name,
      { ...toolConfig, inputSchema: (toolConfig.inputSchema ?? {}) as AnySchema, execution: { taskSupport: 'required' } },
      handler,
    );
    this.#wrapToolsCall(server);
    // Never leave the SDK's own tasks/* handlers in place next to a guarded tool (they would answer from the local store).
    this.install(server);
    return registered;
  }

  /**
   * Stops taking tasks and aborts the running works (reason 'shutdown'): a running work ends its
   * task as failed at the broker, a work still waiting for an approval cancels its task there (so
   * no later approval finds a task whose work will never run). A task whose creation is under way
   * is waited for and ended the same way (its work never starts). Resolves when all have, or
   * after `timeoutMs`.
   */
  async close(timeoutMs = 5_000): Promise<void> {
    this.#closed = true;
    for (const w of this.#local.all()) w.controller.abort('shutdown' satisfies AbortReason);
    const ended = (async () => {
      // A creation that resolves now starts a work that #start aborts at once (the guard is closed).
      await Promise.allSettled([...this.#creations]);
      await Promise.all(this.#local.all().map((w) => w.settled));
    })();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([ended, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  #requester(authInfo: AuthInfo | undefined): Requester {
    const requester = requesterOf(authInfo);
    if (!requester) throw noRequester();
    return requester;
  }

  #view(task: Task): McpTask {
    return mcpTaskOf(task, { pollIntervalMs: this.#pollIntervalMs });
  }

  /** One broker read for the requester; a task the broker calls ended stops its work here too. */
  async #read(taskId: string, operation: 'poll' | 'result', requester: Requester): Promise<{ task: Task; result: TaskResult | null; resultExpired: boolean }> {
    const read = await this.#broker.readTask(taskId, { operation, onBehalfOf: requester, deadlineMs: this.#deadlineMs }).catch((err: unknown) => {
      throw mcpErrorOf(err, taskId);
    });
    if (!isLive(read.task.state)) this.#local.abort(taskId, read.task.state === 'EXPIRED' ? 'expired' : 'cancelled');
    return read;
  }

  /**
   * tasks/result: the stored result of a finished task; for a live one, blocks until it ends (the
   * spec). It waits on the work's end in this process, re-checking at the broker at growing
   * intervals (pollInterval doubling up to maxRecheckMs) for endings that happen elsewhere
   * (cancel, expiry, an admin's revoke, another replica): a bounded number of audited reads.
   */
  async #awaitResult(taskId: string, requester: Requester, signal: AbortSignal): Promise<CallToolResult> {
    let read = await this.#read(taskId, 'result', requester);
    let delayMs = this.#pollIntervalMs;
    while (isLive(read.task.state)) {
      await waitForChange(this.#local.work(taskId)?.settled, delayMs, signal);
      delayMs = Math.min(delayMs * 2, this.#maxRecheckMs);
      read = await this.#read(taskId, 'poll', requester);
      if (!isLive(read.task.state)) read = await this.#read(taskId, 'result', requester);
    }
    return resultOf(taskId, read);
  }

  async #createTask(tool: GuardedTool, args: unknown, authInfo: AuthInfo | undefined, requestedTtlMs: number | undefined): Promise<CreateTaskResult> {
    const requester = this.#requester(authInfo);
    if (this.#closed) throw new McpError(ErrorCode.InternalError, 'the MCP server is shutting down; retry elsewhere');
    if (this.#local.size + this.#creations.size >= this.#maxWorks) {
      throw new McpError(ErrorCode.InternalError, `too many tasks running on this server (${this.#maxWorks}); retry later`);
    }
    const ttlMs = Math.min(Math.max(requestedTtlMs ?? this.#defaultTtlMs, 1_000), this.#maxTtlMs);
    const params: JsonObject = { tool: tool.name, arguments_sha256: argumentsSha256(args) };
    const creation = (async () => {
      const spec = {
        action: tool.name,
        audience: this.#audience,
        scopes: tool.scopes,
        resources: tool.resources?.(args) ?? [],
        params,
        ttlSeconds: Math.ceil(ttlMs / 1000),
        // A create whose answer was lost (deadline, connection) is retried once with the same key:
        // the broker replays the task it committed instead of leaving an orphan behind.
        idempotencyKey: randomUUID(),
      };
      const create = () => this.#broker.createTask(spec, { onBehalfOf: requester, deadlineMs: this.#deadlineMs });
      const { task } = await create().catch((err: unknown) => {
        if (isBrokerUnavailable(err)) return create();
        throw err;
      });
      this.#start(tool, args, task, authInfo);
      return { task: this.#view(task) };
    })();
    this.#creations.add(creation);
    try {
      return await creation;
    } finally {
      this.#creations.delete(creation);
    }
  }

  /** Runs the tool's work in the background and tells the broker how it ended. */
  #start(tool: GuardedTool, args: unknown, task: Task, authInfo: AuthInfo | undefined): void {
    const controller = new AbortController();
    let settle!: () => void;
    const work: RunningWork = { task, controller, settled: new Promise<void>((r) => (settle = r)) };
    this.#local.add(work);
    // Created while close() waited for the creation: the work never starts, the task ends below.
    if (this.#closed) controller.abort('shutdown' satisfies AbortReason);
    const expiry = setTimeout(() => controller.abort('expired' satisfies AbortReason), Math.max(0, task.expiresAt.getTime() - Date.now()));
    expiry.unref();
    const context: ToolTaskContext = {
      taskId: task.taskId,
      task,
      signal: controller.signal,
      authInfo,
      issueToken: (options = {}) => this.#broker.issueToken(task.taskId, { deadlineMs: this.#deadlineMs, ...options }),
    };
    const reasonOf = (): AbortReason | undefined => (controller.signal.aborted ? (controller.signal.reason as AbortReason) : undefined);
    void (async () => {
      try {
        // A task that needs an approval runs nothing before it has one: its work has effects of its own.
        if (task.state !== 'ACTIVE' && !(await this.#approved(task.taskId, controller.signal))) {
          // A shutdown while it waits would leave it pending at the broker, approvable, with no work to run.
          if (reasonOf() === 'shutdown') await this.#cancel(task.taskId, 'the MCP server shut down before approval');
          return;
        }
        let outcome: { result: CallToolResult; failed: boolean } | undefined;
        // A work aborted before it starts (shut down meanwhile) does not start.
        if (!controller.signal.aborted) {
          try {
            outcome = { result: await tool.work(args, context), failed: false };
          } catch (err) {
            outcome = { result: errorResult(err), failed: true };
          }
        }
        const reason = reasonOf();
        // Cancelled and expired tasks were ended by the broker; a shutdown ends them as failed here.
        if (reason === 'shutdown')
          await this.#complete(task.taskId, { result: errorResult(new Error('the MCP server shut down before the tool finished')), failed: true });
        else if (reason === undefined && outcome) await this.#complete(task.taskId, outcome);
      } finally {
        clearTimeout(expiry);
        this.#local.delete(task.taskId);
        settle();
      }
    })();
  }

  /**
   * Waits, at growing intervals, until an admin (or approver) approved the task (true) or it
   * ended or the work was aborted (false). Each look is the gateway's own poll, on the record.
   */
  async #approved(taskId: string, signal: AbortSignal): Promise<boolean> {
    let delayMs = this.#pollIntervalMs;
    for (;;) {
      try {
        await waitForChange(undefined, delayMs, signal);
      } catch {
        return false;
      }
      delayMs = Math.min(delayMs * 2, this.#maxRecheckMs);
      try {
        const { task } = await this.#broker.readTask(taskId, { operation: 'poll', deadlineMs: this.#deadlineMs });
        if (task.state === 'ACTIVE') return true;
        if (!isLive(task.state)) return false;
      } catch (err) {
        // Unreachable or busy: look again at the next interval.
        if (!isBrokerUnavailable(err) && !isBrokerBusy(err)) {
          this.#onError(err, taskId);
          return false;
        }
      }
    }
  }

  /**
   * Cancels a task this server serves, as its gateway (no requester), for a work that never ran.
   * A task that ended meanwhile (approval refused, ttl, a revoke) needs nothing more.
   */
  async #cancel(taskId: string, reason: string): Promise<void> {
    try {
      await this.#broker.cancelTask(taskId, reason, { deadlineMs: this.#deadlineMs });
    } catch (err) {
      if (err instanceof TaskBrokerError && err.reason === 'failed-precondition') return;
      this.#onError(err, taskId);
    }
  }

  /**
   * completeTask with the result, retried a few times while the broker is unreachable or busy
   * (after the delay it names). A result the broker refuses otherwise (too large for its message
   * limit or its result limit, not JSON) ends the task as failed with a short error instead, so
   * the requester is not left waiting for the task's ttl.
   */
  async #complete(taskId: string, outcome: { result: CallToolResult; failed: boolean }): Promise<void> {
    let current = outcome;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#broker.completeTask(taskId, current.failed ? 'failed' : 'completed', {
          result: { json: JSON.stringify(current.result), failed: current.failed },
          deadlineMs: this.#deadlineMs,
        });
        return;
      } catch (err) {
        const reason = err instanceof TaskBrokerError ? err.reason : undefined;
        // Ended meanwhile (cancelled, expired, revoked): nothing left to store.
        if (reason === 'failed-precondition') return;
        const busy = isBrokerBusy(err);
        if (busy || isBrokerUnavailable(err)) {
          if (attempt >= 4) {
            this.#onError(err, taskId);
            return;
          }
          await new Promise((r) => setTimeout(r, busy ? err.retryAfterMs : 250 * 2 ** attempt));
          continue;
        }
        if (current === outcome) {
          this.#onError(err, taskId);
          current = {
            result: errorResult(new Error(`the tool's result could not be stored: ${err instanceof Error ? err.message : String(err)}`)),
            failed: true,
          };
          continue;
        }
        this.#onError(err, taskId);
        return;
      }
    }
  }

  /**
   * The McpServer turns every error of a tool handler into a tool result, which the Server then
   * refuses as "Invalid task creation result": the requester would never hear that the broker
   * was unreachable or said no. The wrapper answers a guarded task creation that failed with the
   * guard's own error instead. The SDK has no public way to read the handler it installed, so the
   * wrapper takes it from the Server's handler map, and fails loudly if that ever changes.
   */
  #wrapToolsCall(server: McpServer): void {
    if (this.#wrapped.has(server)) return;
    const handlers = (server.server as unknown as { _requestHandlers?: Map<string, RequestHandler> })._requestHandlers;
    const original = handlers?.get('tools/call');
    if (!original) throw new Error('task-broker/mcp: this MCP SDK version keeps no tools/call handler where the guard expects it');
    server.server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
      try {
        return (await original(request, extra)) as CallToolResult;
      } catch (err) {
        throw this.#creationFailures.get(extra.signal) ?? err;
      }
    });
    this.#wrapped.add(server);
  }
}

export function guardMcpTasks(options: GuardOptions): McpTaskGuard {
  return new McpTaskGuard(options);
}

function errorResult(err: unknown): CallToolResult {
  return { content: [{ type: 'text', text: err instanceof Error ? err.message : String(err) }], isError: true };
}

/** The answer of tasks/result for a finished task, or the MCP error that says why there is none. */
function resultOf(taskId: string, read: { task: Task; result: TaskResult | null; resultExpired: boolean }): CallToolResult {
  if (read.resultExpired) throw new McpError(ErrorCode.InvalidParams, `Task ${taskId}: its result is no longer available (retention ended)`);
  if (!read.result) {
    const why =
      read.task.state === 'CANCELLED'
        ? 'was cancelled'
        : read.task.state === 'EXPIRED'
          ? 'failed: task ttl elapsed'
          : read.task.state === 'REVOKED'
            ? `was revoked: ${read.task.endReason ?? ''}`
            : 'ended';
    throw new McpError(ErrorCode.InvalidParams, `Task ${taskId} ${why.trim()}; it has no result`);
  }
  const result = JSON.parse(read.result.json) as CallToolResult;
  return { ...result, _meta: { ...result._meta, [RELATED_TASK_META_KEY]: { taskId } } };
}
