/**
 * A small HTTP server for the broker's endpoints that are not gRPC (JWKS, health, readiness and
 * metrics: ops-routes.ts), on its own port so it can be exposed without exposing the gRPC
 * listener. Exact-path routes, GET and HEAD only, no request bodies.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../observability/logger.js';

export type Route = (req: IncomingMessage) => Promise<{ status: number; headers?: Record<string, string>; body: string | Buffer }>;

export interface OpsHttpServerOptions {
  /** Open connections at most (probes, scrapers, JWKS fetchers); more are closed on accept. Default 256. */
  maxConnections?: number;
  logger: Logger;
  /** How long close() waits for in-flight requests before cutting their connections; default 5 s. */
  closeGraceMs?: number;
}

const ALLOWED_METHODS = 'GET, HEAD';

export class OpsHttpServer {
  readonly #routes = new Map<string, Route>();
  readonly #server: Server;
  readonly #log: Logger;
  readonly #closeGraceMs: number;
  #closing = false;

  constructor(options: OpsHttpServerOptions) {
    this.#log = options.logger.child({ component: 'ops-http' });
    this.#closeGraceMs = options.closeGraceMs ?? 5_000;
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#log.error({ err, path: req.url }, 'HTTP response could not be written');
        res.destroy();
      });
    });
    // Slow or idle clients must not hold sockets open indefinitely.
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
    this.#server.keepAliveTimeout = 5_000;
    this.#server.maxHeadersCount = 100;
    // A connection that sends nothing at all is closed too, and probes and scrapers need few.
    this.#server.setTimeout(30_000, (socket) => socket.destroy());
    this.#server.maxConnections = options.maxConnections ?? 256;
  }

  /** Serves GET and HEAD on exactly `path` (query strings are ignored). */
  route(path: string, handler: Route): void {
    if (!path.startsWith('/')) throw new Error(`route path must start with '/': ${path}`);
    if (this.#routes.has(path)) throw new Error(`route ${path} is already registered`);
    this.#routes.set(path, handler);
  }

  /** Starts listening; resolves with the bound port (useful with port 0). */
  async listen(host: string, port: number): Promise<number> {
    if (this.#server.listening) throw new Error('the HTTP server is already listening');
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`cannot listen for HTTP on ${host}:${port}: ${err.message}`));
      this.#server.once('error', onError);
      this.#server.listen(port, host, () => {
        this.#server.off('error', onError);
        resolve();
      });
    });
    return (this.#server.address() as AddressInfo).port;
  }

  /** Stops accepting, closes idle keep-alive connections, and resolves once every connection is gone. */
  async close(): Promise<void> {
    if (!this.#server.listening) return;
    this.#closing = true;
    await new Promise<void>((resolve, reject) => {
      const force = setTimeout(() => this.#server.closeAllConnections(), this.#closeGraceMs);
      force.unref();
      this.#server.close((err) => {
        clearTimeout(force);
        if (err) reject(err);
        else resolve();
      });
      this.#server.closeIdleConnections();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Bodies are never read; drain them so the connection stays usable.
    req.resume();
    const route = this.#routes.get(pathOf(req.url));
    if (!route) return this.#send(req, res, 404, {}, 'not found\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return this.#send(req, res, 405, { Allow: ALLOWED_METHODS }, 'method not allowed\n');
    let result: Awaited<ReturnType<Route>>;
    try {
      result = await route(req);
    } catch (err) {
      this.#log.error({ err, path: pathOf(req.url), method: req.method }, 'HTTP handler failed');
      return this.#send(req, res, 500, {}, 'internal server error\n');
    }
    this.#send(req, res, result.status, result.headers ?? {}, result.body);
  }

  #send(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string>, body: string | Buffer): void {
    if (res.headersSent || res.destroyed) return;
    res.statusCode = status;
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    if (!res.hasHeader('content-type')) res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.setHeader('X-Content-Type-Options', 'nosniff');
    if (this.#closing) res.setHeader('Connection', 'close');
    if (req.method === 'HEAD') res.end();
    else res.end(body);
  }
}

/** The path of a request target, without query or fragment; '' when it cannot be parsed. */
function pathOf(url: string | undefined): string {
  if (url === undefined) return '';
  try {
    return new URL(url, 'http://ops.invalid').pathname;
  } catch {
    return '';
  }
}
