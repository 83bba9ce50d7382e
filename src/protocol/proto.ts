/**
 * The broker's protobuf definitions, loaded at run time by @grpc/proto-loader; the TypeScript
 * types in src/gen are generated from the same files (`npm run gen`).
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader';
import { protoDir } from '../files/project-paths.js';
import type { ProtoGrpcType as AdminProtoType } from '../gen/admin.js';
import type { ProtoGrpcType as BrokerProtoType } from '../gen/broker.js';

/** Both files load into one package: taskbroker.v1 holds TaskBroker and TaskBrokerAdmin. */
export type BrokerProto = BrokerProtoType & AdminProtoType;

export const PROTO_FILES = ['taskbroker/v1/broker.proto', 'taskbroker/v1/admin.proto'];

/** Must match the flags of `npm run gen` so the generated types describe what is loaded. */
export const LOADER_OPTIONS: Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protoDir],
};

let cached: PackageDefinition | undefined;

export function brokerPackageDefinition(): PackageDefinition {
  cached ??= loadSync(PROTO_FILES, LOADER_OPTIONS);
  return cached;
}

export function brokerProto(): BrokerProto {
  return grpc.loadPackageDefinition(brokerPackageDefinition()) as unknown as BrokerProto;
}
