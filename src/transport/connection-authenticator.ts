/**
 * Turns each TLS connection into a verified SPIFFE identity, and each gRPC call into its Caller.
 *
 * grpc-js's own TLS trusts the union of its root certificates and exposes only the leaf to
 * handlers, so the broker terminates TLS itself: every connection's full presented chain is
 * verified against the bundle of the leaf's own trust domain (see spiffe/x509svid.ts) before
 * the socket is injected into grpc-js. Connections that fail stay open just long enough for
 * their calls to receive UNAUTHENTICATED with the reason, then are closed.
 *
 * Identity is checked on every call, not only at the handshake: when a bundle changes, or a
 * certificate on the verified path expires, the connection's chain is verified again and its
 * calls are refused once it no longer verifies.
 */
import * as grpc from '@grpc/grpc-js';
import type { TLSSocket } from 'node:tls';
import { clipped } from '../errors.js';
import { LogThrottle } from '../observability/log-throttle.js';
import type { Logger } from '../observability/logger.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import { linkedChain } from '../spiffe/peer-chain.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';
import { X509SvidError, type X509SvidFailure } from '../spiffe/x509svid-error.js';
import { attachCaller, type Caller } from './caller.js';

/** A refusal's reason in a log line: bounded (it quotes the peer's certificate subjects). */
const MAX_LOGGED_REASON = 512;

export type Admission =
  { readonly ok: true; readonly caller: Caller } | { readonly ok: false; readonly failure: X509SvidFailure | 'unknown-connection'; readonly reason: string };

interface ConnectionEntry {
  readonly socket: TLSSocket;
  readonly presented: readonly Buffer[];
  readonly peer: string;
  admission: Admission;
  /** Bundle generation the admission was computed against. */
  generation: number;
  closeTimer?: NodeJS.Timeout;
}

export interface ConnectionAuthenticatorOptions {
  bundles: X509BundleSource;
  logger: Logger;
  clock?: () => Date;
  /** How long a refused connection stays open so its calls can be answered with UNAUTHENTICATED. */
  refusedConnectionLingerMs?: number;
}

interface ConnectionAddress {
  localAddress?: string | undefined;
  localPort?: number | undefined;
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}

/** The TCP 4-tuple: unique among open connections, and what grpc-js reports for each call. */
function connectionKey(c: ConnectionAddress): string | undefined {
  if (!c.remoteAddress || !c.remotePort || !c.localAddress || !c.localPort) return undefined;
  return `${c.remoteAddress}|${c.remotePort}|${c.localAddress}|${c.localPort}`;
}

function callerFrom(verified: ReturnType<typeof verifyX509Svid>): Caller {
  return {
    spiffeId: verified.spiffeId,
    trustDomain: verified.spiffeId.trustDomain,
    certThumbprint: verified.leaf.thumbprint,
    chain: verified.chain,
    validUntil: verified.validUntil,
  };
}

export class ConnectionAuthenticator {
  readonly #connections = new Map<string, ConnectionEntry>();
  readonly #bundles: X509BundleSource;
  readonly #logger: Logger;
  readonly #clock: () => Date;
  readonly #lingerMs: number;
  /**
   * Strangers cause these lines: a flood of one kind of refusal writes a few lines per interval
   * (every call is also recorded by the call recorder). Kinds are the failure names, a fixed set:
   * the reason text names the peer's certificates and the time, so keyed on it nothing would be held back.
   */
  readonly #refusals: LogThrottle;

  constructor(options: ConnectionAuthenticatorOptions) {
    this.#bundles = options.bundles;
    this.#logger = options.logger;
    this.#clock = options.clock ?? (() => new Date());
    this.#lingerMs = options.refusedConnectionLingerMs ?? 5_000;
    this.#refusals = new LogThrottle(options.logger);
  }

  /** Open connections, verified or not. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Verifies a freshly handshaken connection and remembers the outcome until the socket closes. */
  admit(socket: TLSSocket): Admission {
    const key = connectionKey(socket);
    const peer = `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`;
    const presented = linkedChain(socket.getPeerCertificate(true));
    let admission: Admission;
    if (!key) {
      admission = { ok: false, failure: 'unknown-connection', reason: 'connection has no TCP address' };
    } else if (this.#connections.has(key)) {
      // Cannot happen for live TCP connections; refuse rather than guess which one a call belongs to.
      admission = { ok: false, failure: 'unknown-connection', reason: 'duplicate connection address' };
    } else {
      admission = this.#verify(presented);
    }
    const entry: ConnectionEntry = { socket, presented, peer, admission, generation: this.#bundles.generation };
    if (key && !this.#connections.has(key)) {
      this.#connections.set(key, entry);
      socket.once('close', () => {
        clearTimeout(entry.closeTimer);
        if (this.#connections.get(key) === entry) this.#connections.delete(key);
      });
    }
    if (admission.ok) {
      this.#logger.debug({ peer, spiffeId: admission.caller.spiffeId.toString() }, 'connection authenticated');
    } else {
      this.#refuse(entry, admission);
    }
    return admission;
  }

  /** The identity behind a call's connection, re-verified if bundles changed or a certificate lapsed. */
  authenticate(address: ConnectionAddress): Admission {
    const key = connectionKey(address);
    const entry = key ? this.#connections.get(key) : undefined;
    if (!entry) {
      return { ok: false, failure: 'unknown-connection', reason: 'call arrived on a connection that was not authenticated' };
    }
    const { admission } = entry;
    if (!admission.ok) return admission;
    const stale = entry.generation !== this.#bundles.generation || this.#clock().getTime() > admission.caller.validUntil.getTime();
    if (stale) {
      entry.generation = this.#bundles.generation;
      entry.admission = this.#verify(entry.presented);
      if (!entry.admission.ok) this.#refuse(entry, entry.admission);
    }
    return entry.admission;
  }

  /** A grpc-js server interceptor: calls from connections that do not verify end with UNAUTHENTICATED, before any handler. */
  interceptor(): grpc.ServerInterceptor {
    return (methodDescriptor, call) =>
      new grpc.ServerInterceptingCall(call, {
        start: (next) => {
          next({
            onReceiveMetadata: (metadata, nextMetadata) => {
              const admission = this.authenticate(call.getConnectionInfo());
              if (admission.ok) {
                attachCaller(metadata, admission.caller);
                nextMetadata(metadata);
                return;
              }
              this.#refusals.log(
                'warn',
                `call:${admission.failure}`,
                { peer: call.getPeer(), method: methodDescriptor.path, failure: admission.failure, reason: clipped(admission.reason, MAX_LOGGED_REASON) },
                'call refused: peer is not a valid X509-SVID',
              );
              call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: `peer is not a valid X509-SVID: ${admission.reason}` });
            },
          });
        },
      });
  }

  #verify(presented: readonly Buffer[]): Admission {
    try {
      return { ok: true, caller: callerFrom(verifyX509Svid(presented, this.#bundles, { now: this.#clock() })) };
    } catch (err) {
      if (err instanceof X509SvidError) return { ok: false, failure: err.failure, reason: err.message };
      return { ok: false, failure: 'malformed', reason: `x509svid: verification failed: ${(err as Error).message}` };
    }
  }

  #refuse(entry: ConnectionEntry, admission: Extract<Admission, { ok: false }>): void {
    this.#refusals.log(
      'warn',
      `connection:${admission.failure}`,
      { peer: entry.peer, failure: admission.failure, reason: clipped(admission.reason, MAX_LOGGED_REASON) },
      'connection refused: peer is not a valid X509-SVID',
    );
    if (entry.closeTimer) return;
    entry.closeTimer = setTimeout(() => {
      entry.socket.end();
      setTimeout(() => entry.socket.destroy(), 1_000).unref();
    }, this.#lingerMs);
    entry.closeTimer.unref();
  }
}
