/**
 * A typed, promise-based client for the broker, for workloads and resource servers.
 */
import * as grpc from '@grpc/grpc-js';
import type { TaskBrokerClient } from '../gen/taskbroker/v1/TaskBroker.js';
import type { WhoAmIResponse__Output } from '../gen/taskbroker/v1/WhoAmIResponse.js';
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

/** The workload- and resource-server-facing API of the broker. */
export class BrokerClient {
  readonly raw: TaskBrokerClient;

  constructor(options: ConnectOptions) {
    const { TaskBroker } = brokerProto().taskbroker.v1;
    this.raw = new TaskBroker(options.address, options.credentials, { ...svidChannelOptions(), ...options.channelOptions });
  }

  /** Connects with an X509-SVID given as PEM strings. */
  static withSvid(address: string, svid: SvidCredentialsOptions): BrokerClient {
    return new BrokerClient({ address, credentials: svidChannelCredentials(svid) });
  }

  whoAmI(options?: CallOptions): Promise<WhoAmIResponse__Output> {
    return unaryCall((md, opts, cb) => this.raw.WhoAmI({}, md, opts, cb), options);
  }

  close(): void {
    this.raw.close();
  }
}
