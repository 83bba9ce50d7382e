/**
 * The gRPC status of each domain error kind, and the trailer that carries a retry hint (gRFC A6
 * `grpc-retry-pushback-ms`): the one table the server answers with and the client SDK reads back.
 */
import * as grpc from '@grpc/grpc-js';
import type { ErrorKind } from '../errors.js';

export const RETRY_PUSHBACK_TRAILER = 'grpc-retry-pushback-ms';

export const STATUS_OF_KIND: Readonly<Record<ErrorKind, grpc.status>> = {
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'not-found': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'permission-denied': grpc.status.PERMISSION_DENIED,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
  aborted: grpc.status.ABORTED,
  unavailable: grpc.status.UNAVAILABLE,
};
