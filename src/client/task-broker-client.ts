/**
 * The workload SDK: a client for the broker that takes and returns plain JavaScript (results.ts),
 * throws TaskBrokerError subclasses (errors.ts), and presents an X509-SVID that follows its
 * source, so the same client object keeps working across SVID and bundle rotations.
 *
 *   const broker = await connectTaskBroker({ address, serverId, workloadApi: {} });
 *   const { task } = await broker.createTask({ action, audience, scopes, params });
 *   const { token } = await broker.issueToken(task.taskId);
 */
import type * as grpc from '@grpc/grpc-js';
import { secondsToDuration } from '../protocol/struct.js';
import type { X509Source } from '../spiffe/x509-source.js';
import { BrokerClient, type CallOptions } from './broker-client.js';
import { toTaskBrokerError } from './errors.js';
import {
  identityOf,
  issuedTokenOf,
  taskOf,
  taskSpecOf,
  type CreatedTask,
  type CreateTaskInput,
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

export interface IssueTokenOptions extends CallOptions {
  /** A subset of the task's scopes; default: all of them. */
  scopes?: string[];
  /** Shorter than the broker's default; never past the task's expiry. */
  ttlSeconds?: number;
}

export class TaskBrokerClient {
  /** The low-level client on the same channel (for the verifier SDK, streams, VerifyToken). */
  readonly rpc: BrokerClient;
  readonly source: X509Source;
  readonly #ownsSource: boolean;
  readonly #deadlineMs: number | undefined;
  #closed = false;

  constructor(options: TaskBrokerClientOptions) {
    this.source = options.source;
    this.#ownsSource = options.ownsSource ?? false;
    this.#deadlineMs = options.deadlineMs;
    this.rpc = new BrokerClient({
      address: options.address,
      credentials: x509SourceCredentials(options.source, { serverId: options.serverId }),
      ...(options.channelOptions ? { channelOptions: options.channelOptions } : {}),
    });
  }

  /** Registers a task owned by this workload. */
  createTask(input: CreateTaskInput, options?: CallOptions): Promise<CreatedTask> {
    return this.#call(options, async (opts) => {
      const res = await this.rpc.createTask({ spec: taskSpecOf(input), idempotencyKey: input.idempotencyKey ?? '' }, opts);
      return { task: taskOf(res.task), canonicalSpec: res.canonicalSpec, replayed: res.replayed };
    });
  }

  getTask(taskId: string, options?: CallOptions): Promise<Task> {
    return this.#call(options, async (opts) => taskOf((await this.rpc.getTask(taskId, opts)).task));
  }

  /** A token for an ACTIVE task, bound to this client's current certificate. */
  issueToken(taskId: string, options: IssueTokenOptions = {}): Promise<IssuedToken> {
    const { scopes, ttlSeconds, ...callOptions } = options;
    return this.#call(callOptions, async (opts) => {
      const ttl = ttlSeconds === undefined ? null : secondsToDuration(ttlSeconds);
      return issuedTokenOf(await this.rpc.issueToken({ taskId, scopes: scopes ?? [], ttl }, opts));
    });
  }

  /** ACTIVE → COMPLETED; every token of the task is revoked with it. */
  completeTask(taskId: string, outcome = '', options?: CallOptions): Promise<EndedTask> {
    return this.#call(options, async (opts) => {
      const res = await this.rpc.completeTask(taskId, outcome, opts);
      return { task: taskOf(res.task), revokedTokens: res.revokedTokens };
    });
  }

  /** ACTIVE or PENDING_APPROVAL → CANCELLED; every token of the task is revoked with it. */
  cancelTask(taskId: string, reason = '', options?: CallOptions): Promise<EndedTask> {
    return this.#call(options, async (opts) => {
      const res = await this.rpc.cancelTask(taskId, reason, opts);
      return { task: taskOf(res.task), revokedTokens: res.revokedTokens };
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
      throw toTaskBrokerError(err);
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
