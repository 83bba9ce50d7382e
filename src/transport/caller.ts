/**
 * The verified identity behind a gRPC call, and how handlers get it.
 *
 * The authentication interceptor resolves every call's connection to a Caller before any
 * handler runs and files it under the call's Metadata object, which grpc-js hands unchanged to
 * the handler. A client cannot forge the entry: it lives in a WeakMap, not in headers.
 */
import * as grpc from '@grpc/grpc-js';
import type { ParsedCertificate } from '../spiffe/certificate.js';
import type { SpiffeId } from '../spiffe/id.js';

export interface Caller {
  readonly spiffeId: SpiffeId;
  readonly trustDomain: string;
  /** RFC 8705 x5t#S256 of the leaf certificate: what tokens are bound to. */
  readonly certThumbprint: string;
  /** The verified path, leaf first, trust anchor last. */
  readonly chain: readonly ParsedCertificate[];
  /** After this instant the connection's certificates no longer verify. */
  readonly validUntil: Date;
}

const callers = new WeakMap<grpc.Metadata, Caller>();

export function attachCaller(metadata: grpc.Metadata, caller: Caller): void {
  callers.set(metadata, caller);
}

export class UnauthenticatedError extends Error {
  readonly code = grpc.status.UNAUTHENTICATED;
  override readonly name = 'UnauthenticatedError';
}

/** The call's verified Caller. Throws (UNAUTHENTICATED) if the call did not pass authentication. */
export function callerOf(call: { metadata: grpc.Metadata }): Caller {
  const caller = callers.get(call.metadata);
  if (!caller) {
    // Only reachable if a service is mounted without the authentication interceptor: fail closed.
    throw new UnauthenticatedError('no verified caller for this call');
  }
  return caller;
}
