/**
 * The workload SDK: a client for the broker that takes and returns plain JavaScript (results.ts),
 * throws TaskBrokerError subclasses (errors.ts), and presents an X509-SVID that follows its
 * source, so the same client object keeps working across SVID and bundle rotations.
 *
 *   const broker = await connectTaskBroker({ address, serverId, workloadApi: {} });
 *   const { task } = await broker.createTask({ action, audience, scopes, params });
 *   const { token } = await broker.issueToken(task.taskId);
 *   const { task: child } = await broker.delegateTask({ parentTaskId: task.taskId, delegatee, spec: { scopes } });
 */
import type * as grpc from '@grpc/grpc-js';
import type { Requester, TaskReadOperation, TaskResult } from '../model/task.js';
import { BrokerError } from '../errors.js';
import { secondsToDuration } from '../protocol/struct.js';
import type { X509Source } from '../spiffe/x509-source.js';
import { BrokerClient, type CallOptions } from './broker-client.js';
import { toTaskBrokerError } from './errors.js';
import {
  delegatedSpecOf,
  identityOf,
  issuedTokenOf,
  requesterMessage,
  taskOf,
  taskResultOf,
  taskSpecOf,
  type CreatedTask,
  type CreateTaskInput,
  type DelegatedTask,
  type DelegateTaskInput,
  type EndedTask,
  type Identity,
  type IssuedToken,
  type Task,
} from './results.js';
import { x509SourceCredentials } from './source-credentials.js';
import { fileX509Source, workloadApiX509Source, type FileX509SourceOptions, type WorkloadApiX509SourceOptions } from './sources.js';

export interface TaskBrokerClientOptions {
  /** host:port of the broker's gRPC listener. */
  address: string;
  /** The broker's SPIFFE ID, e.g. spiffe://example.org/task-broker: nothing else is accepted as the broker. */
  serverId: string;
  /** Where the client's SVID and the trust bundles come from. */
  source: X509Source;
  /** Close `source` with the client (default false: the caller owns it). */
  ownsSource?: boolean;
  /** Deadline of each call unless the call says otherwise (default 10 s). */
  deadlineMs?: number;
  /** Extra grpc-js channel options, over the SDK's own (svidChannelOptions). */
  channelOptions?: grpc.ChannelOptions;
}

/** Options of a call on a task: for a task whose rule binds follow-ups to its session, the subject token. */
export interface TaskCallOptions extends CallOptions {
  /**
   * A JWT from an identity provider the policy names (subject_issuers). On createTask it binds the
   * task to its iss, sub and sid (the task's principal); on the other calls it proves the caller
   * acts for that same principal and session, required when the task's rule says bind_session
   * (without it such a task is NOT_FOUND, as for a stranger).
   */
  subjectToken?: string;
}

/** Options of a call a gateway (e.g. an MCP server) makes for the party that asked it. */
export interface GatewayCallOptions extends TaskCallOptions {
  /**
   * Who asked: the X509-SVID chain it presented to the gateway (DER, leaf first), or its subject
   * token. On createTask the task becomes the requester's, served by this client (Task.gateway);
   * on the other calls the broker checks it is the requester the task was created for (else the
   * task is not found, as for a stranger).
   */
  onBehalfOf?: Requester;
}

export interface ReadTaskOptions extends GatewayCallOptions {
  /** A poll (task.polled, default) or a result read (task.result_read; the answer carries the result). */
  operation?: TaskReadOperation;
}

export interface CompleteTaskOptions extends TaskCallOptions {
  /** The work's result (a JSON document, at most 512 KiB), kept for the policy's result_retention. */
  result?: { json: string; failed?: boolean };
}

export interface ListOwnTasksOptions extends GatewayCallOptions {
  /** 1 to 100 (default 50). */
  pageSize?: number;
  pageToken?: string;
}

export interface IssueTokenOptions extends TaskCallOptions {
  /** A subset of the task's scopes; default: all of them. */
  scopes?: string[];
  /** Shorter than the broker's default; never past the task's expiry. */
  ttlSeconds?: number;
  /**
   * A use-limited token: VerifyToken accepts it at most this many times (1 to 1000; default: no
   * limit). The token carries a max_uses claim, so verifiers check it online, never offline.
   */
  maxUses?: number;
}

export class TaskBrokerClient {
  /** The low-level client on the same channel (for the verifier SDK, streams, VerifyToken). */
  readonly rpc: BrokerClient;
  readonly source: X509Source;
  readonly #ownsSource: boolean;
  readonly #deadlineMs: number | undefined;
  /** The address dialled, for the hint of a call that did not reach the broker. */
  readonly #address: string;
  #closed = false;

  constructor(options: TaskBrokerClientOptions) {
    this.source = options.source;
    this.#ownsSource = options.ownsSource ?? false;
    this.#deadlineMs = options.deadlineMs;
    this.#address = options.address;
    this.rpc = new BrokerClient({
      address: options.address,
      credentials: x509SourceCredentials(options.source, { serverId: options.serverId }),
      ...(options.channelOptions ? { channelOptions: options.channelOptions } : {}),
    });
  }

  /**
   * Registers a task owned by this workload; with a subjectToken, bound to its subject (the task's
   * principal); with onBehalfOf, the requester's task, served by this workload as its gateway.
   */
  createTask(input: CreateTaskInput, options: GatewayCallOptions = {}): Promise<CreatedTask> {
    const { subjectToken, onBehalfOf, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const request = {
        spec: taskSpecOf(input),
        idempotencyKey: input.idempotencyKey ?? '',
        subjectToken: subjectToken ?? '',
        onBehalfOf: requesterMessage(onBehalfOf),
      };
      const res = await this.rpc.createTask(request, opts);
      return { task: taskOf(res.task), canonicalSpec: res.canonicalSpec, replayed: res.replayed };
    });
  }

  /** The poll (task.polled). */
  getTask(taskId: string, options: GatewayCallOptions = {}): Promise<Task> {
    return this.#call(options, async () => (await this.readTask(taskId, { ...options, operation: 'poll' })).task);
  }

  /**
   * A read of a task for a purpose: a poll, or a result read (task.result_read), whose answer
   * carries the stored result while the policy retains it (resultExpired once it is gone).
   */
  readTask(taskId: string, options: ReadTaskOptions = {}): Promise<{ task: Task; result: TaskResult | null; resultExpired: boolean }> {
    const { subjectToken, onBehalfOf, operation, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const request = {
        taskId,
        subjectToken: subjectToken ?? '',
        operation: operation === 'result' ? ('TASK_OPERATION_RESULT' as const) : ('TASK_OPERATION_POLL' as const),
        onBehalfOf: requesterMessage(onBehalfOf),
      };
      const res = await this.rpc.getTask(request, opts);
      return { task: taskOf(res.task), result: taskResultOf(res.result), resultExpired: res.resultExpired };
    });
  }

  /** This workload's own tasks, newest first; with onBehalfOf, the tasks it serves for that requester. */
  listOwnTasks(options: ListOwnTasksOptions = {}): Promise<{ tasks: Task[]; nextPageToken: string | null }> {
    const { onBehalfOf, pageSize, pageToken, subjectToken: _unused, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const request = { onBehalfOf: requesterMessage(onBehalfOf), pageSize: pageSize ?? 0, pageToken: pageToken ?? '' };
      const res = await this.rpc.listOwnTasks(request, opts);
      return { tasks: res.tasks.map((t) => taskOf(t)), nextPageToken: res.nextPageToken || null };
    });
  }

  /** A token for an ACTIVE task, bound to this client's current certificate. */
  issueToken(taskId: string, options: IssueTokenOptions = {}): Promise<IssuedToken> {
    const { scopes, ttlSeconds, maxUses, subjectToken, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      // The wire's 0 means "no limit", and a uint32 would silently truncate 2.5 or wrap -1: refuse them here.
      if (maxUses !== undefined && !(Number.isSafeInteger(maxUses) && maxUses >= 1)) {
        throw new BrokerError('invalid-argument', `maxUses must be a whole number from 1 (omit it for no limit), got ${String(maxUses)}`);
      }
      const ttl = ttlSeconds === undefined ? null : secondsToDuration(ttlSeconds);
      const request = { taskId, scopes: scopes ?? [], ttl, maxUses: maxUses ?? 0, subjectToken: subjectToken ?? '' };
      return issuedTokenOf(await this.rpc.issueToken(request, opts));
    });
  }

  /** ACTIVE → COMPLETED; every token of the task, and every task delegated from it, end with it. */
  completeTask(taskId: string, outcome = '', options: CompleteTaskOptions = {}): Promise<EndedTask> {
    const { subjectToken, result, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const stored = result ? { json: result.json, failed: result.failed ?? false } : null;
      const res = await this.rpc.completeTask({ taskId, outcome, subjectToken: subjectToken ?? '', result: stored }, opts);
      return { task: taskOf(res.task), revokedTokens: res.revokedTokens };
    });
  }

  /** ACTIVE or PENDING_APPROVAL → CANCELLED; every token of the task, and every task delegated from it, end with it. */
  cancelTask(taskId: string, reason = '', options: GatewayCallOptions = {}): Promise<EndedTask> {
    const { subjectToken, onBehalfOf, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const res = await this.rpc.cancelTask({ taskId, reason, subjectToken: subjectToken ?? '', onBehalfOf: requesterMessage(onBehalfOf) }, opts);
      return { task: taskOf(res.task), revokedTokens: res.revokedTokens };
    });
  }

  /**
   * Hands a narrower part of this workload's ACTIVE task to another workload: a child task owned
   * by `delegatee`, within the parent's scopes, resources and remaining lifetime, allowed by the
   * delegation block of the rule that allows the root task. The child's tokens name the
   * delegators (act) and the parent (parent_task_id). A refusal names what was refused: the
   * policy (PermissionDeniedError), a widening of the parent's scopes, resources or lifetime, an
   * argument (InvalidArgumentError); a task that is not yours is a NotFoundError.
   */
  delegateTask(input: DelegateTaskInput, options?: CallOptions): Promise<DelegatedTask> {
    return this.#call(options, async (opts) => {
      const request = {
        parentTaskId: input.parentTaskId,
        delegatee: input.delegatee,
        spec: delegatedSpecOf(input.spec),
        idempotencyKey: input.idempotencyKey ?? '',
        subjectToken: input.subjectToken ?? '',
      };
      const res = await this.rpc.delegateTask(request, opts);
      return { task: taskOf(res.task), canonicalSpec: res.canonicalSpec, replayed: res.replayed };
    });
  }

  /** The identity the broker verified for this client's connection. */
  whoAmI(options?: CallOptions): Promise<Identity> {
    return this.#call(options, async (opts) => identityOf(await this.rpc.whoAmI(opts)));
  }

  /** Closes the channel, and the source when the client created it (or was given ownsSource). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.rpc.close();
    if (this.#ownsSource) this.source.close();
  }

  /** The one path of every call: default deadline in, TaskBrokerError out. */
  async #call<T>(options: CallOptions | undefined, run: (options: CallOptions) => Promise<T>): Promise<T> {
    try {
      return await run({ ...(this.#deadlineMs === undefined ? {} : { deadlineMs: this.#deadlineMs }), ...options });
    } catch (err) {
      throw toTaskBrokerError(err, { address: this.#address });
    }
  }
}

export interface ConnectTaskBrokerOptions extends Omit<TaskBrokerClientOptions, 'source' | 'ownsSource'> {
  /** An X509Source you made (and close yourself). */
  source?: X509Source;
  /** The SPIFFE Workload API (default address: SPIFFE_ENDPOINT_SOCKET). */
  workloadApi?: WorkloadApiX509SourceOptions;
  /** SVID and bundle files, reloaded on change. */
  files?: FileX509SourceOptions;
}

/**
 * A TaskBrokerClient on the first of `source`, `workloadApi` or `files` given; with none of them,
 * on the Workload API at SPIFFE_ENDPOINT_SOCKET. A source it creates is closed by close().
 */
export async function connectTaskBroker(options: ConnectTaskBrokerOptions): Promise<TaskBrokerClient> {
  const { source, workloadApi, files, ...rest } = options;
  const given = [source, workloadApi, files].filter((s) => s !== undefined).length;
  if (given > 1) throw new Error('connectTaskBroker: give one of source, workloadApi or files');
  if (source) return new TaskBrokerClient({ ...rest, source });
  const created = files ? await fileX509Source(files) : await workloadApiX509Source(workloadApi);
  try {
    return new TaskBrokerClient({ ...rest, source: created, ownsSource: true });
  } catch (err) {
    created.close();
    throw err;
  }
}
