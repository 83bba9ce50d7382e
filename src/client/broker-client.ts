/**
 * A typed, promise-based client for the broker, for workloads and resource servers.
 */
import * as grpc from '@grpc/grpc-js';
import type { TaskBrokerClient } from '../gen/taskbroker/v1/TaskBroker.js';
import type { WhoAmIResponse__Output } from '../gen/taskbroker/v1/WhoAmIResponse.js';
import type { CancelTaskRequest } from '../gen/taskbroker/v1/CancelTaskRequest.js';
import type { CancelTaskResponse__Output } from '../gen/taskbroker/v1/CancelTaskResponse.js';
import type { CompleteTaskRequest } from '../gen/taskbroker/v1/CompleteTaskRequest.js';
import type { CompleteTaskResponse__Output } from '../gen/taskbroker/v1/CompleteTaskResponse.js';
import type { CreateTaskRequest } from '../gen/taskbroker/v1/CreateTaskRequest.js';
import type { CreateTaskResponse__Output } from '../gen/taskbroker/v1/CreateTaskResponse.js';
import type { DelegateTaskRequest } from '../gen/taskbroker/v1/DelegateTaskRequest.js';
import type { DelegateTaskResponse__Output } from '../gen/taskbroker/v1/DelegateTaskResponse.js';
import type { GetTaskRequest } from '../gen/taskbroker/v1/GetTaskRequest.js';
import type { GetTaskResponse__Output } from '../gen/taskbroker/v1/GetTaskResponse.js';
import type { ListOwnTasksRequest } from '../gen/taskbroker/v1/ListOwnTasksRequest.js';
import type { ListOwnTasksResponse__Output } from '../gen/taskbroker/v1/ListOwnTasksResponse.js';
import type { IssueTokenRequest } from '../gen/taskbroker/v1/IssueTokenRequest.js';
import type { IssueTokenResponse__Output } from '../gen/taskbroker/v1/IssueTokenResponse.js';
import type { VerifyTokenRequest } from '../gen/taskbroker/v1/VerifyTokenRequest.js';
import type { VerifyTokenResponse__Output } from '../gen/taskbroker/v1/VerifyTokenResponse.js';
import type { GetSigningKeysResponse__Output } from '../gen/taskbroker/v1/GetSigningKeysResponse.js';
import type { ReportTokenUseResponse__Output } from '../gen/taskbroker/v1/ReportTokenUseResponse.js';
import type { TokenUse } from '../gen/taskbroker/v1/TokenUse.js';
import type { WatchRevocationsResponse__Output } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
import { brokerProto } from '../protocol/proto.js';
import { svidChannelCredentials, svidChannelOptions, type SvidCredentialsOptions } from './credentials.js';

export interface CallOptions {
  deadlineMs?: number;
  metadata?: grpc.Metadata;
}

export type UnaryInvoker<Res> = (metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<Res>) => grpc.ClientUnaryCall;

/** Runs one unary call and resolves with its response; rejects with the grpc ServiceError. */
export function unaryCall<Res>(invoke: UnaryInvoker<Res>, options: CallOptions = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke(options.metadata ?? new grpc.Metadata(), { deadline: Date.now() + (options.deadlineMs ?? 10_000) }, (err, res) => {
      if (err) reject(err);
      else resolve(res as Res);
    });
  });
}

export interface ConnectOptions {
  /** host:port of the broker. */
  address: string;
  credentials: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
}

/** A generated client class (proto-loader's), as brokerProto() hands them out. */
type GeneratedClientClass<Raw extends grpc.Client> = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => Raw;

/** What BrokerClient and AdminClient share: the generated client, on a channel with the SVID channel options under the caller's. */
export abstract class ServiceClient<Raw extends grpc.Client> {
  readonly raw: Raw;

  constructor(Generated: GeneratedClientClass<Raw>, options: ConnectOptions) {
    this.raw = new Generated(options.address, options.credentials, { ...svidChannelOptions(), ...options.channelOptions });
  }

  /** Connects with an X509-SVID given as PEM strings. */
  static withSvid<C>(this: new (options: ConnectOptions) => C, address: string, svid: SvidCredentialsOptions): C {
    return new this({ address, credentials: svidChannelCredentials(svid) });
  }

  close(): void {
    this.raw.close();
  }
}

/** The workload- and resource-server-facing API of the broker. */
export class BrokerClient extends ServiceClient<TaskBrokerClient> {
  constructor(options: ConnectOptions) {
    super(brokerProto().taskbroker.v1.TaskBroker, options);
  }

  whoAmI(options?: CallOptions): Promise<WhoAmIResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.WhoAmI({}, md, opts, cb), options);
  }

  createTask(request: CreateTaskRequest, options?: CallOptions): Promise<CreateTaskResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.CreateTask(request, md, opts, cb), options);
  }

  /** By task ID, or the whole request (with a subject_token). */
  getTask(request: string | GetTaskRequest, options?: CallOptions): Promise<GetTaskResponse__Output> {
    const message = typeof request === 'string' ? { taskId: request } : request;
    return unaryCall((md, opts, cb) => this.raw.GetTask(message, md, opts, cb), options);
  }

  /** The caller's own tasks (or, with on_behalf_of, those it serves for that requester), newest first. */
  listOwnTasks(request: ListOwnTasksRequest, options?: CallOptions): Promise<ListOwnTasksResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.ListOwnTasks(request, md, opts, cb), options);
  }

  issueToken(request: IssueTokenRequest, options?: CallOptions): Promise<IssueTokenResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.IssueToken(request, md, opts, cb), options);
  }

  /** By task ID and outcome, or the whole request (with a subject_token). */
  completeTask(taskId: string, outcome: string, options?: CallOptions): Promise<CompleteTaskResponse__Output>;
  completeTask(request: CompleteTaskRequest, options?: CallOptions): Promise<CompleteTaskResponse__Output>;
  completeTask(request: string | CompleteTaskRequest, outcomeOrOptions?: string | CallOptions, options?: CallOptions): Promise<CompleteTaskResponse__Output> {
    const [message, callOptions] =
      typeof request === 'string'
        ? [{ taskId: request, outcome: outcomeOrOptions as string }, options]
        : [request, outcomeOrOptions as CallOptions | undefined];
    return unaryCall((md, opts, cb) => this.raw.CompleteTask(message, md, opts, cb), callOptions);
  }

  /** By task ID and reason, or the whole request (with a subject_token). */
  cancelTask(taskId: string, reason: string, options?: CallOptions): Promise<CancelTaskResponse__Output>;
  cancelTask(request: CancelTaskRequest, options?: CallOptions): Promise<CancelTaskResponse__Output>;
  cancelTask(request: string | CancelTaskRequest, reasonOrOptions?: string | CallOptions, options?: CallOptions): Promise<CancelTaskResponse__Output> {
    const [message, callOptions] =
      typeof request === 'string' ? [{ taskId: request, reason: reasonOrOptions as string }, options] : [request, reasonOrOptions as CallOptions | undefined];
    return unaryCall((md, opts, cb) => this.raw.CancelTask(message, md, opts, cb), callOptions);
  }

  /** A child of the caller's ACTIVE task, owned by the delegatee. */
  delegateTask(request: DelegateTaskRequest, options?: CallOptions): Promise<DelegateTaskResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.DelegateTask(request, md, opts, cb), options);
  }

  /** For resource servers: the caller must be the token's audience. */
  verifyToken(request: VerifyTokenRequest, options?: CallOptions): Promise<VerifyTokenResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.VerifyToken(request, md, opts, cb), options);
  }

  /** The JWKS and the issuer, over the authenticated channel. */
  getSigningKeys(options?: CallOptions): Promise<GetSigningKeysResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.GetSigningKeys({}, md, opts, cb), options);
  }

  /** The revocation stream of tokens addressed to the caller; resume with the last message's cursor. No deadline by default. */
  watchRevocations(
    afterCursor = '',
    options: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
  ): grpc.ClientReadableStream<WatchRevocationsResponse__Output> {
    const callOptions: grpc.CallOptions = options.deadlineMs === undefined ? {} : { deadline: Date.now() + options.deadlineMs };
    return this.raw.WatchRevocations({ afterCursor }, options.metadata ?? new grpc.Metadata(), callOptions);
  }

  /** Reports offline verifications (one call, messages of at most `perMessage` uses); resolves with the broker's counts. */
  reportTokenUse(uses: TokenUse[], options: CallOptions & { perMessage?: number } = {}): Promise<ReportTokenUseResponse__Output> {
    const perMessage = options.perMessage ?? 256;
    return new Promise((resolve, reject) => {
      const stream = this.raw.ReportTokenUse(options.metadata ?? new grpc.Metadata(), { deadline: Date.now() + (options.deadlineMs ?? 10_000) }, (err, res) => {
        if (err) reject(err);
        else resolve(res as ReportTokenUseResponse__Output);
      });
      for (let i = 0; i < uses.length; i += perMessage) stream.write({ uses: uses.slice(i, i + perMessage) });
      stream.end();
    });
  }
}
