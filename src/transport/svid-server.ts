/**
 * The broker's gRPC server over mutual TLS with X509-SVIDs.
 *
 * A node:tls server (client certificate required, ALPN h2) terminates TLS, the
 * ConnectionAuthenticator verifies each peer's full chain against its own trust domain's
 * bundle, and the socket is then injected into grpc-js. Rotating the broker's SVID swaps the
 * secure context in place; open connections are untouched.
 */
import * as grpc from '@grpc/grpc-js';
import { createServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from '../observability/logger.js';
import { LogThrottle } from '../observability/log-throttle.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import type { TlsIdentity, X509SvidSource } from '../spiffe/x509-source.js';
import { ConnectionAuthenticator } from './connection-authenticator.js';

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

export type ConnectionRefusal = 'max-connections' | 'max-handshakes' | 'no-h2' | 'draining' | 'not-an-svid';
export type HandshakeFailure = 'timeout' | 'tls-error';

/** Told about connection events (metrics). */
export interface TransportObserver {
  connectionAccepted?(): void;
  connectionRefused?(reason: ConnectionRefusal): void;
  handshakeFailed?(reason: HandshakeFailure): void;
}

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
    ...(limits.maxConnectionAgeMs > 0 ? { 'grpc.max_connection_age_ms': limits.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': limits.maxConnectionAgeGraceMs } : {}),
    'grpc.max_concurrent_streams': limits.maxConcurrentStreams,
  };
}

function secureContextOptions(identity: TlsIdentity) {
  return { cert: identity.certChainPem, key: identity.keyPem, minVersion: 'TLSv1.2' as const };
}

export class SvidServer {
  /** Register services here; every call passes the authentication interceptor first. */
  readonly grpc: grpc.Server;
  readonly authenticator: ConnectionAuthenticator;
  readonly #tls: TlsServer;
  readonly #logger: Logger;
  readonly #sockets = new Set<TLSSocket>();
  /** Every accepted TCP connection until it closes, handshaking or not. */
  readonly #raw = new Set<Socket>();
  readonly #limits: ConnectionLimits;
  readonly #observer: TransportObserver;
  readonly #throttle: LogThrottle;
  readonly #unsubscribe: () => void;
  #injector: ReturnType<grpc.Server['createConnectionInjector']> | undefined;
  #accepted = 0;
  /** Calls started and not yet ended. */
  #activeCalls = 0;
  #onIdle: (() => void) | undefined;
  #shutdown: Promise<void> | undefined;

  constructor(options: SvidServerOptions) {
    this.#logger = options.logger;
    this.#limits = { ...DEFAULT_CONNECTION_LIMITS, ...options.limits };
    this.#observer = options.observer ?? {};
    this.#throttle = new LogThrottle(options.logger);
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
    this.#tls.maxConnections = this.#limits.maxConnections;
    this.#tls.on('drop', (data?: { remoteAddress?: string; remotePort?: number }) => {
      this.#observer.connectionRefused?.('max-connections');
      this.#throttle.log('warn', 'max-connections', { peer: `${data?.remoteAddress ?? 'unknown'}:${data?.remotePort ?? 0}`, maxConnections: this.#limits.maxConnections }, 'connection refused: the connection limit is reached');
    });
    this.#tls.on('connection', (raw: Socket) => this.#onConnection(raw));
    this.#tls.on('secureConnection', (socket: TLSSocket) => this.#onSecureConnection(socket));
    this.#tls.on('tlsClientError', (err: Error & { code?: string }, socket) => {
      // With a listener attached Node leaves the socket open: a peer that never finishes its
      // handshake would hold it (and a file descriptor) forever.
      socket.destroy();
      const reason: HandshakeFailure = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'timeout' : 'tls-error';
      this.#observer.handshakeFailed?.(reason);
      this.#throttle.log('info', `handshake-${reason}`, { peer: `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`, err: err.message.slice(0, 200) }, 'TLS handshake failed; connection closed');
    });
    this.#unsubscribe = options.identity.onChange((next) => {
      this.#tls.setSecureContext(secureContextOptions(next));
      this.#logger.info({ spiffeId: next.spiffeId.toString(), notAfter: next.notAfter.toISOString() }, 'serving with new SVID');
    });
  }

  /** Starts listening on `host:port` (port 0 picks a free one) and resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    this.#injector ??= this.grpc.createConnectionInjector(grpc.ServerCredentials.createInsecure());
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
    return this.#sockets.size;
  }

  /** TCP connections open now, in their handshake or past it. */
  get openConnections(): number {
    return this.#raw.size;
  }

  /** Connections still in their TLS handshake (not authenticated yet). */
  get handshakesInProgress(): number {
    return Math.max(0, this.#raw.size - this.#sockets.size);
  }

  get limits(): ConnectionLimits {
    return this.#limits;
  }

  /** Connections accepted since start (TLS handshake completed). */
  get connectionsAccepted(): number {
    return this.#accepted;
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
    this.#shutdown ??= this.#drain(graceMs);
    return this.#shutdown;
  }

  async #drain(graceMs: number): Promise<void> {
    this.#unsubscribe();
    const closed = new Promise<void>((resolve) => this.#tls.close(() => resolve()));
    const openAtStart = this.#sockets.size;
    const drained = new Promise<'drained'>((resolve) => this.grpc.tryShutdown(() => resolve('drained')));
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
    const outcome = await Promise.race([drained, idle, deadline]);
    if (outcome === 'timeout') {
      this.#logger.warn({ graceMs, callsInFlight: this.#activeCalls }, 'shutdown deadline reached; cancelling remaining calls');
      this.grpc.forceShutdown();
    } else {
      if (outcome === 'idle') this.grpc.forceShutdown(); // no call left to cancel: only idle connections
      this.#logger.info({ connections: openAtStart, drainMs: Date.now() - started }, 'gRPC calls drained');
    }
    clearTimeout(deadlineTimer);
    const sockets = [...this.#sockets, ...this.#raw];
    for (const socket of sockets) socket.destroy();
    // Resolved only once every connection is gone: 'close' comes a tick after destroy() (and after
    // `socket.closed` turns true), and that event is what takes a socket out of the two sets.
    const tracked = (socket: Socket) => this.#sockets.has(socket as TLSSocket) || this.#raw.has(socket);
    await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => (tracked(socket) ? socket.once('close', () => resolve()) : resolve()))));
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


  /** A new TCP connection (its TLS handshake starts now): refused at once when too many are mid-handshake. */
  #onConnection(raw: Socket): void {
    if (this.#shutdown) {
      raw.destroy();
      this.#observer.connectionRefused?.('draining');
      return;
    }
    if (this.handshakesInProgress >= this.#limits.maxHandshakes) {
      raw.destroy();
      this.#observer.connectionRefused?.('max-handshakes');
      this.#throttle.log('warn', 'max-handshakes', { peer: `${raw.remoteAddress ?? 'unknown'}:${raw.remotePort ?? 0}`, maxHandshakes: this.#limits.maxHandshakes }, 'connection refused: too many TLS handshakes in progress');
      return;
    }
    this.#raw.add(raw);
    raw.once('close', () => this.#raw.delete(raw));
  }

  #onSecureConnection(socket: TLSSocket): void {
    this.#accepted += 1;
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    if (this.#shutdown) {
      // Accepted before the listener closed, handshaken after: the broker is draining, not serving.
      socket.destroy();
      this.#observer.connectionRefused?.('draining');
      return;
    }
    if (socket.alpnProtocol !== 'h2') {
      this.#throttle.log('info', 'no-h2', { peer: `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}` }, 'connection closed: client did not negotiate HTTP/2 (ALPN h2)');
      this.#observer.connectionRefused?.('no-h2');
      socket.destroy();
      return;
    }
    this.#observer.connectionAccepted?.();
    if (!this.authenticator.admit(socket).ok) this.#observer.connectionRefused?.('not-an-svid');
    if (!this.#injector) {
      socket.destroy();
      return;
    }
    this.#injector.injectConnection(socket);
  }
}
