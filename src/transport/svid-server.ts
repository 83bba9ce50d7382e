/**
 * The broker's gRPC server over mutual TLS with X509-SVIDs.
 *
 * A node:tls server (client certificate required, ALPN h2) terminates TLS, the
 * ConnectionAuthenticator verifies each peer's full chain against its own trust domain's
 * bundle, and the socket is then injected into grpc-js. Rotating the broker's SVID swaps the
 * secure context in place; open connections are untouched. What happens to each connection
 * (limits, ALPN, authentication, injection) is in connection-gate.ts; this module owns the
 * servers' lifecycle: listen, rotate, drain.
 */
import * as grpc from '@grpc/grpc-js';
import { constants } from 'node:crypto';
import { createServer, type Server as TlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../observability/logger.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import type { TlsIdentity, X509SvidSource } from '../spiffe/x509-source.js';
import { ConnectionAuthenticator } from './connection-authenticator.js';
import { ConnectionGate, type TransportObserver } from './connection-gate.js';

/** Bounds on what peers can hold: connections, handshakes in progress, idle and old connections. */
export interface ConnectionLimits {
  /** A TLS handshake not finished by then is closed (also a peer that sends nothing). */
  handshakeTimeoutMs: number;
  /** Open connections at most, authenticated or not; further ones are closed on accept. */
  maxConnections: number;
  /** Connections still in their TLS handshake at most (not yet authenticated); further ones are closed on accept. */
  maxHandshakes: number;
  /** An authenticated connection without a call for this long is closed (GOAWAY); 0: never. */
  idleTimeoutMs: number;
  /** Connections are closed gracefully after about this long, so clients rebalance over replicas; 0: never. */
  maxConnectionAgeMs: number;
  /** How long calls on a connection closed for its age may still take. */
  maxConnectionAgeGraceMs: number;
  /** Concurrent calls (HTTP/2 streams) per connection. */
  maxConcurrentStreams: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  handshakeTimeoutMs: 5_000,
  maxConnections: 4_096,
  maxHandshakes: 256,
  idleTimeoutMs: 5 * 60_000,
  maxConnectionAgeMs: 30 * 60_000,
  maxConnectionAgeGraceMs: 5 * 60_000,
  maxConcurrentStreams: 48,
};

export interface SvidServerOptions {
  bundles: X509BundleSource;
  identity: X509SvidSource;
  logger: Logger;
  clock?: () => Date;
  limits?: Partial<ConnectionLimits>;
  observer?: TransportObserver;
  refusedConnectionLingerMs?: number;
  /** Extra grpc-js server options (message size limits, keepalive). */
  grpcOptions?: grpc.ServerOptions;
  /** Interceptors that run before authentication, outermost first (the call recorder). */
  outerInterceptors?: grpc.ServerInterceptor[];
  /** Interceptors that run after authentication (admission, decoding). */
  interceptors?: grpc.ServerInterceptor[];
}

/** Largest request message (bytes). No valid request comes near it: params are at most 16 KiB. */
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;

const DEFAULT_GRPC_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': 60_000,
  'grpc.keepalive_timeout_ms': 20_000,
};

function grpcConnectionOptions(limits: ConnectionLimits): grpc.ServerOptions {
  return {
    ...(limits.idleTimeoutMs > 0 ? { 'grpc.max_connection_idle_ms': limits.idleTimeoutMs } : {}),
    ...(limits.maxConnectionAgeMs > 0
      ? { 'grpc.max_connection_age_ms': limits.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': limits.maxConnectionAgeGraceMs }
      : {}),
    'grpc.max_concurrent_streams': limits.maxConcurrentStreams,
  };
}

/**
 * No session resumption (no tickets; Node keeps no session-ID cache): on a resumed session the
 * server learns only the peer's leaf, not the chain it presented, so a caller whose SVID is
 * issued by an intermediate could not be verified again. gRPC connections are long-lived, so a
 * full handshake per connection costs next to nothing.
 */
function secureContextOptions(identity: TlsIdentity) {
  return { cert: identity.certChainPem, key: identity.keyPem, minVersion: 'TLSv1.2' as const, secureOptions: constants.SSL_OP_NO_TICKET };
}

export class SvidServer {
  /** Register services here; every call passes the authentication interceptor first. */
  readonly grpc: grpc.Server;
  readonly authenticator: ConnectionAuthenticator;
  readonly #tls: TlsServer;
  readonly #gate: ConnectionGate;
  readonly #logger: Logger;
  readonly #limits: ConnectionLimits;
  readonly #unsubscribe: () => void;
  #injector: ReturnType<grpc.Server['createConnectionInjector']> | undefined;
  /** Calls started and not yet ended. */
  #activeCalls = 0;
  #onIdle: (() => void) | undefined;
  #shutdown: Promise<void> | undefined;

  constructor(options: SvidServerOptions) {
    this.#logger = options.logger;
    this.#limits = { ...DEFAULT_CONNECTION_LIMITS, ...options.limits };
    this.authenticator = new ConnectionAuthenticator({
      bundles: options.bundles,
      logger: options.logger,
      clock: options.clock,
      refusedConnectionLingerMs: options.refusedConnectionLingerMs,
    });
    this.grpc = new grpc.Server({
      ...DEFAULT_GRPC_OPTIONS,
      ...grpcConnectionOptions(this.#limits),
      ...options.grpcOptions,
      interceptors: [...(options.outerInterceptors ?? []), this.#countCalls(), this.authenticator.interceptor(), ...(options.interceptors ?? [])],
    });
    const identity = options.identity.current();
    this.#tls = createServer({
      ...(identity ? secureContextOptions(identity) : {}),
      requestCert: true,
      // The authenticator decides; OpenSSL's verdict against its default roots is meaningless here.
      rejectUnauthorized: false,
      ALPNProtocols: ['h2'],
      handshakeTimeout: this.#limits.handshakeTimeoutMs,
    });
    this.#gate = new ConnectionGate(this.#tls, {
      limits: this.#limits,
      observer: options.observer ?? {},
      logger: options.logger,
      authenticator: this.authenticator,
    });
    this.#unsubscribe = options.identity.onChange((next) => {
      this.#tls.setSecureContext(secureContextOptions(next));
      this.#logger.info({ spiffeId: next.spiffeId.toString(), notAfter: next.notAfter.toISOString() }, 'serving with new SVID');
    });
  }

  /** Starts listening on `host:port` (port 0 picks a free one) and resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    this.#injector ??= this.grpc.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    this.#gate.injectInto(this.#injector);
    await new Promise<void>((resolve, reject) => {
      this.#tls.once('error', reject);
      this.#tls.listen(port, host, () => {
        this.#tls.off('error', reject);
        resolve();
      });
    });
    return (this.#tls.address() as AddressInfo).port;
  }

  /** Connections open now that finished their TLS handshake. */
  get connectionCount(): number {
    return this.#gate.authenticated;
  }

  /** TCP connections open now, in their handshake or past it. */
  get openConnections(): number {
    return this.#gate.open;
  }

  /** Connections still in their TLS handshake (not authenticated yet). */
  get handshakesInProgress(): number {
    return this.#gate.handshaking;
  }

  get limits(): ConnectionLimits {
    return this.#limits;
  }

  /** Connections accepted since start (TLS handshake completed). */
  get connectionsAccepted(): number {
    return this.#gate.accepted;
  }

  /** True once shutdown() was called. */
  get shuttingDown(): boolean {
    return this.#shutdown !== undefined;
  }

  /**
   * Stops accepting connections, lets in-flight calls finish within `graceMs`, then cuts what is
   * left. Resolves once every connection is gone. Calling it again returns the same promise.
   *
   * How the calls drain: the TLS listener closes at once (no new connections; a handshake that
   * completes afterwards is dropped), and grpc-js's tryShutdown closes every HTTP/2 session
   * gracefully: a GOAWAY naming the last stream the broker accepted, after which each session
   * ends when its last call has sent its status. Calls the client started after that GOAWAY are
   * refused with REFUSED_STREAM, which gRPC clients retry transparently on another connection
   * (another replica). At the deadline whatever is left is cancelled.
   */
  shutdown(graceMs = 10_000): Promise<void> {
    if (!this.#shutdown) {
      this.#gate.drain();
      this.#shutdown = this.#drain(graceMs);
    }
    return this.#shutdown;
  }

  async #drain(graceMs: number): Promise<void> {
    this.#unsubscribe();
    const closed = new Promise<void>((resolve) => this.#tls.close(() => resolve()));
    const openAtStart = this.#gate.authenticated;
    // GOAWAY on every session; calls already running go on. Its callback is not the end of the
    // calls: on Node.js 26 an http2 server's close() closes its sessions at once, and grpc-js
    // then counts them as done while their streams still run. The calls themselves are counted.
    this.grpc.tryShutdown(() => undefined);
    // Sessions end once their clients close them after the GOAWAY; a client that keeps an idle
    // connection open must not hold the shutdown: once no call is in flight, the rest is cut.
    const idle = new Promise<'idle'>((resolve) => {
      if (this.#activeCalls === 0) resolve('idle');
      else this.#onIdle = () => resolve('idle');
    }).then(async (outcome) => {
      // A moment for the last statuses and the GOAWAY frames to reach the clients.
      await new Promise((r) => setTimeout(r, 50));
      return outcome;
    });
    let deadlineTimer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      deadlineTimer = setTimeout(() => resolve('timeout'), graceMs);
      deadlineTimer.unref();
    });
    const started = Date.now();
    const outcome = await Promise.race([idle, deadline]);
    if (outcome === 'timeout') this.#logger.warn({ graceMs, callsInFlight: this.#activeCalls }, 'shutdown deadline reached; cancelling remaining calls');
    else this.#logger.info({ connections: openAtStart, drainMs: Date.now() - started }, 'gRPC calls drained');
    // Cancels what is left at the deadline; after the drain, only idle sessions are left to close.
    this.grpc.forceShutdown();
    clearTimeout(deadlineTimer);
    await this.#gate.closeAll();
    await closed;
  }

  /** Counts calls from their first event to their end (status sent, or the stream closed). */
  #countCalls(): grpc.ServerInterceptor {
    return (_descriptor, call) => {
      this.#activeCalls += 1;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        this.#activeCalls -= 1;
        if (this.#activeCalls === 0) this.#onIdle?.();
      };
      return new grpc.ServerInterceptingCall(call, {
        start: (next) => next({ onCancel: end }),
        sendStatus: (status, next) => {
          next(status);
          end();
        },
      });
    };
  }
}
