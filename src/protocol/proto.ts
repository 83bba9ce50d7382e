/**
 * The broker's protobuf definitions, loaded at run time by @grpc/proto-loader; the TypeScript
 * types in src/gen are generated from the same files (`npm run gen`).
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import protobuf from 'protobufjs';
import { protoDir } from '../files/project-paths.js';
import type { ProtoGrpcType as AdminProtoType } from '../gen/admin.js';
import type { ProtoGrpcType as BrokerProtoType } from '../gen/broker.js';

/** Both files load into one package: taskbroker.v1 holds TaskBroker and TaskBrokerAdmin. */
export type BrokerProto = BrokerProtoType & AdminProtoType;

export const PROTO_FILES = ['taskbroker/v1/broker.proto', 'taskbroker/v1/admin.proto'];

/**
 * The one set of loader options for every .proto the broker loads. Must match the flags of
 * `npm run gen` so the generated types describe what is loaded.
 */
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

let cachedRoot: protobuf.Root | undefined;

/**
 * The same files as a protobufjs Root, for reflection over the messages (the proto3 JSON mapping
 * in proto-json.ts); proto-loader keeps its own Root to itself. Loaded with LOADER_OPTIONS, so
 * the field names are those of the objects proto-loader hands out. Imports resolve against the
 * include directories first, then against the well-known types bundled with protobufjs.
 */
export function brokerProtoRoot(): protobuf.Root {
  if (!cachedRoot) {
    const root = new protobuf.Root();
    const bundled = root.resolvePath.bind(root);
    root.resolvePath = (origin, target) => {
      if (isAbsolute(target)) return target;
      const found = (LOADER_OPTIONS.includeDirs ?? []).map((dir) => join(dir, target)).find((path) => existsSync(path));
      return found ?? bundled(origin, target);
    };
    root.loadSync(PROTO_FILES, LOADER_OPTIONS).resolveAll();
    cachedRoot = root;
  }
  return cachedRoot;
}
