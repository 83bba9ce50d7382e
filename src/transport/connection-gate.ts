/**
 * Which TCP connections reach grpc-js: the TLS server's connection limit, a bound on handshakes
 * in progress, ALPN h2 only, nothing new while draining, and every peer's SVID verified by the
 * ConnectionAuthenticator before its socket is injected. Refusals and failed handshakes are
 * counted (TransportObserver) and logged through a throttle, since strangers can cause them.
 *
 * Apart from svid-server.ts, which owns the servers' lifecycle (listen, rotate, drain): this is
 * what happens to one connection, from accept to injection, and the sets that track it.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { Logger } from '../observability/logger.js';
import { LogThrottle } from '../observability/log-throttle.js';
import type { ConnectionAuthenticator } from './connection-authenticator.js';
import type { ConnectionLimits } from './svid-server.js';

export type ConnectionRefusal = 'max-connections' | 'max-handshakes' | 'no-h2' | 'draining' | 'not-an-svid';
export type HandshakeFailure = 'timeout' | 'tls-error';

/** Told about connection events (metrics). */
export interface TransportObserver {
  connectionAccepted?(): void;
  connectionRefused?(reason: ConnectionRefusal): void;
  handshakeFailed?(reason: HandshakeFailure): void;
}

type ConnectionInjector = ReturnType<grpc.Server['createConnectionInjector']>;

export interface ConnectionGateOptions {
  limits: Pick<ConnectionLimits, 'maxConnections' | 'maxHandshakes'>;
  observer: TransportObserver;
  logger: Logger;
  authenticator: ConnectionAuthenticator;
}

export class ConnectionGate {
  readonly #limits: Pick<ConnectionLimits, 'maxConnections' | 'maxHandshakes'>;
  readonly #observer: TransportObserver;
  readonly #throttle: LogThrottle;
  readonly #authenticator: ConnectionAuthenticator;
  readonly #sockets = new Set<TLSSocket>();
  /** Every accepted TCP connection until it closes, handshaking or not. */
  readonly #raw = new Set<Socket>();
  #injector: ConnectionInjector | undefined;
  #accepted = 0;
  #draining = false;

  /** Takes over `tls`'s connection events. */
  constructor(tls: TlsServer, options: ConnectionGateOptions) {
    this.#limits = options.limits;
    this.#observer = options.observer;
    this.#throttle = new LogThrottle(options.logger);
    this.#authenticator = options.authenticator;
    tls.maxConnections = this.#limits.maxConnections;
    tls.on('drop', (data?: { remoteAddress?: string; remotePort?: number }) => {
      this.#observer.connectionRefused?.('max-connections');
      this.#throttle.log(
        'warn',
        'max-connections',
        { peer: `${data?.remoteAddress ?? 'unknown'}:${data?.remotePort ?? 0}`, maxConnections: this.#limits.maxConnections },
        'connection refused: the connection limit is reached',
      );
    });
    tls.on('connection', (raw: Socket) => this.#onConnection(raw));
    tls.on('secureConnection', (socket: TLSSocket) => this.#onSecureConnection(socket));
    tls.on('tlsClientError', (err: Error & { code?: string }, socket) => {
      // With a listener attached Node leaves the socket open: a peer that never finishes its
      // handshake would hold it (and a file descriptor) forever.
      socket.destroy();
      const reason: HandshakeFailure = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'timeout' : 'tls-error';
      this.#observer.handshakeFailed?.(reason);
      this.#throttle.log(
        'info',
        `handshake-${reason}`,
        { peer: `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`, err: err.message.slice(0, 200) },
        'TLS handshake failed; connection closed',
      );
    });
  }

  /** Authenticated connections go to `injector` from now on (once the server listens). */
  injectInto(injector: ConnectionInjector): void {
    this.#injector = injector;
  }

  /** Closes every new connection from now on: the server is draining, not serving. */
  drain(): void {
    this.#draining = true;
  }

  /** Connections open now that finished their TLS handshake. */
  get authenticated(): number {
    return this.#sockets.size;
  }

  /** TCP connections open now, in their handshake or past it. */
  get open(): number {
    return this.#raw.size;
  }

  /** Connections still in their TLS handshake (not authenticated yet). */
  get handshaking(): number {
    return Math.max(0, this.#raw.size - this.#sockets.size);
  }

  /** Connections accepted since start (TLS handshake completed). */
  get accepted(): number {
    return this.#accepted;
  }

  /** Destroys every connection; resolves once each is gone. */
  async closeAll(): Promise<void> {
    const sockets = [...this.#sockets, ...this.#raw];
    for (const socket of sockets) socket.destroy();
    // Resolved only once every connection is gone: 'close' comes a tick after destroy() (and after
    // `socket.closed` turns true), and that event is what takes a socket out of the two sets.
    const tracked = (socket: Socket) => this.#sockets.has(socket as TLSSocket) || this.#raw.has(socket);
    await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => (tracked(socket) ? socket.once('close', () => resolve()) : resolve()))));
  }

  /** A new TCP connection (its TLS handshake starts now): refused at once when too many are mid-handshake. */
  #onConnection(raw: Socket): void {
    if (this.#draining) {
      raw.destroy();
      this.#observer.connectionRefused?.('draining');
      return;
    }
    if (this.handshaking >= this.#limits.maxHandshakes) {
      raw.destroy();
      this.#observer.connectionRefused?.('max-handshakes');
      this.#throttle.log(
        'warn',
        'max-handshakes',
        { peer: `${raw.remoteAddress ?? 'unknown'}:${raw.remotePort ?? 0}`, maxHandshakes: this.#limits.maxHandshakes },
        'connection refused: too many TLS handshakes in progress',
      );
      return;
    }
    this.#raw.add(raw);
    raw.once('close', () => this.#raw.delete(raw));
  }

  #onSecureConnection(socket: TLSSocket): void {
    this.#accepted += 1;
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    if (this.#draining) {
      // Accepted before the listener closed, handshaken after: the broker is draining, not serving.
      socket.destroy();
      this.#observer.connectionRefused?.('draining');
      return;
    }
    if (socket.alpnProtocol !== 'h2') {
      this.#throttle.log(
        'info',
        'no-h2',
        { peer: `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}` },
        'connection closed: client did not negotiate HTTP/2 (ALPN h2)',
      );
      this.#observer.connectionRefused?.('no-h2');
      socket.destroy();
      return;
    }
    this.#observer.connectionAccepted?.();
    if (!this.#authenticator.admit(socket).ok) this.#observer.connectionRefused?.('not-an-svid');
    if (!this.#injector) {
      socket.destroy();
      return;
    }
    this.#injector.injectConnection(socket);
  }
}
