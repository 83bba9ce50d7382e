/**
 * A client for the SPIFFE Workload API (the SPIRE agent's socket).
 *
 * The endpoint is found through `SPIFFE_ENDPOINT_SOCKET` or given explicitly, as
 * `unix:///path/to/agent.sock` (also `unix:/path`) or `tcp://IP:PORT`, the two forms the SPIFFE
 * Workload Endpoint specification allows. Every call carries the metadata `workload.spiffe.io:
 * true`, without which an endpoint refuses it with INVALID_ARGUMENT.
 *
 * The streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) are kept open for as long as
 * the client lives: a stream that ends or fails is opened again after an exponential backoff
 * with jitter (100 ms doubling up to 30 s by default, back to the start after a message
 * arrives). Each disconnect and reconnect is logged with its reason; messages are never logged,
 * since they carry private keys.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { isIPv4, isIPv6 } from 'node:net';
import { protoDir } from '../files/project-paths.js';
import type { Logger } from '../observability/logger.js';
import type { JWTBundlesResponse__Output } from '../gen/JWTBundlesResponse.js';
import type { SpiffeWorkloadAPIClient } from '../gen/SpiffeWorkloadAPI.js';
import type { ProtoGrpcType as WorkloadProtoType } from '../gen/workload.js';
import type { X509BundlesResponse__Output } from '../gen/X509BundlesResponse.js';
import type { X509SVIDResponse__Output } from '../gen/X509SVIDResponse.js';

export type { JWTBundlesResponse__Output as JwtBundlesResponse } from '../gen/JWTBundlesResponse.js';
export type { X509BundlesResponse__Output as X509BundlesResponse } from '../gen/X509BundlesResponse.js';
export type { X509SVIDResponse__Output as X509SvidResponse } from '../gen/X509SVIDResponse.js';
export type { X509SVID__Output as X509SvidMessage } from '../gen/X509SVID.js';

/** The standard environment variable naming the Workload API endpoint. */
export const SPIFFE_ENDPOINT_SOCKET = 'SPIFFE_ENDPOINT_SOCKET';
/** The metadata every Workload API call must carry, with the value `true`. */
export const WORKLOAD_API_HEADER = 'workload.spiffe.io';

export const WORKLOAD_PROTO_FILE = 'spiffe/workload/workload.proto';

let cachedProto: WorkloadProtoType | undefined;

/** The Workload API definitions, loaded with the same flags as `npm run gen` (see src/protocol/proto.ts). */
export function workloadApiProto(): WorkloadProtoType {
  cachedProto ??= grpc.loadPackageDefinition(
    loadSync(WORKLOAD_PROTO_FILE, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [protoDir] }),
  ) as unknown as WorkloadProtoType;
  return cachedProto;
}

export class WorkloadApiAddressError extends Error {
  override readonly name = 'WorkloadApiAddressError';
}

export interface WorkloadApiAddress {
  /** The address as configured, for log lines and errors. */
  readonly uri: string;
  readonly transport: 'unix' | 'tcp';
  /** The target grpc-js dials (`unix:///path`, `ipv4:1.2.3.4:8000`, `ipv6:[::1]:8000`). */
  readonly target: string;
}

const FORMS = 'unix:///path/to/agent.sock or tcp://IP:PORT';

/**
 * Parses a Workload API address the way the SPIFFE Workload Endpoint spec defines
 * `SPIFFE_ENDPOINT_SOCKET`: `unix:` with an absolute path and nothing else (no host, query or
 * fragment), or `tcp://` with an IP address and a port and nothing else. Throws saying why not.
 */
export function parseWorkloadApiAddress(value: string): WorkloadApiAddress {
  const bad = (why: string) => new WorkloadApiAddressError(`Workload API address "${value}": ${why} (expected ${FORMS})`);
  if (value.trim() === '') throw new WorkloadApiAddressError(`Workload API address is empty (expected ${FORMS})`);
  if (/\s/.test(value)) throw bad('must not contain whitespace');
  const colon = value.indexOf(':');
  const scheme = colon > 0 ? value.slice(0, colon).toLowerCase() : '';
  if (scheme === 'unix') {
    let rest = value.slice(colon + 1);
    if (rest.startsWith('//')) {
      rest = rest.slice(2);
      const slash = rest.indexOf('/');
      const authority = slash === -1 ? rest : rest.slice(0, slash);
      if (authority !== '') throw bad(`a unix address must not name a host ("${authority}"); use three slashes: unix:///path`);
      rest = slash === -1 ? '' : rest.slice(slash);
    }
    if (rest.includes('?') || rest.includes('#')) throw bad('a unix address must not have a query or fragment');
    let path: string;
    try {
      path = decodeURIComponent(rest);
    } catch {
      throw bad('the path has an invalid percent-encoding');
    }
    if (!path.startsWith('/')) throw bad('a unix address needs the absolute path of the socket');
    if (path === '/' || path.endsWith('/')) throw bad('the path must name the socket, not a directory');
    if (path.includes('\0')) throw bad('the path must not contain NUL');
    return { uri: value, transport: 'unix', target: `unix://${path}` };
  }
  if (scheme === 'tcp') {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw bad('not a valid URI');
    }
    if (url.username || url.password) throw bad('a tcp address must not carry user information');
    if (url.pathname !== '' || url.search !== '' || url.hash !== '') throw bad('a tcp address must be exactly tcp://IP:PORT, without path, query or fragment');
    if (url.port === '') throw bad('a tcp address needs a port');
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    if (isIPv4(host)) return { uri: value, transport: 'tcp', target: `ipv4:${host}:${url.port}` };
    if (isIPv6(host)) return { uri: value, transport: 'tcp', target: `ipv6:[${host}]:${url.port}` };
    throw bad('a tcp address needs an IP address, not a host name');
  }
  throw bad(scheme ? `unsupported scheme "${scheme}:"` : 'no scheme');
}

export interface BackoffOptions {
  /** First delay (default 100 ms). */
  initialMs?: number;
  /** Longest delay (default 30 s). */
  maxMs?: number;
}

/**
 * Exponential backoff with "equal jitter": the n-th delay is between half and all of
 * min(max, initial * 2^n), so retries spread out but never collapse to zero.
 */
export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  #attempt = 0;

  readonly #random: () => number;

  constructor(options: BackoffOptions = {}, random: () => number = Math.random) {
    this.#random = random;
    this.initialMs = Math.max(1, options.initialMs ?? 100);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 30_000);
  }

  /** The delay before the next attempt; each call doubles the next one, up to the maximum. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.#attempt, 40));
    this.#attempt += 1;
    return Math.round(ceiling / 2 + this.#random() * (ceiling / 2));
  }

  /** Back to the first delay (after a success). */
  reset(): void {
    this.#attempt = 0;
  }
}

/** One Workload API stream, kept open by the client. */
export interface StreamWatch {
  /** True while the stream is open and has delivered a message on its current call. */
  readonly connected: boolean;
  /** Why the stream last ended or failed; undefined until it has. */
  readonly lastError: string | undefined;
  /** Stops the stream for good. */
  close(): void;
}

export interface StreamHandlers<T> {
  /** Each message, complete (never a delta). An exception thrown here is logged; the stream carries on. */
  onMessage(message: T): void;
  /** The stream ended or failed and will be opened again after a backoff. */
  onDisconnect?(reason: string): void;
}

export interface WorkloadApiClientOptions {
  /** `unix:///path/to/agent.sock`, `unix:/path`, `tcp://IP:PORT`, or an already parsed address. */
  address: string | WorkloadApiAddress;
  logger: Logger;
  backoff?: BackoffOptions;
}

/** The metadata of every Workload API call. */
export function workloadApiMetadata(): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(WORKLOAD_API_HEADER, 'true');
  return metadata;
}

/** Codes the spec says not to retry (a client bug or a missing RPC): retried only at the longest backoff. */
const PERMANENT_CODES = new Set<grpc.status>([grpc.status.INVALID_ARGUMENT, grpc.status.UNIMPLEMENTED]);

function describeStatus(status: grpc.StatusObject): string {
  if (status.code === grpc.status.OK) return 'the server ended the stream';
  return `${grpc.status[status.code] ?? status.code}: ${status.details}`;
}

class ReconnectingStream<T> implements StreamWatch {
  #call: grpc.ClientReadableStream<T> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #connected = false;
  #failures = 0;
  #lastError: string | undefined;
  readonly #backoff: Backoff;

  readonly #name: string;
  readonly #open: (metadata: grpc.Metadata) => grpc.ClientReadableStream<T>;
  readonly #handlers: StreamHandlers<T>;
  readonly #logger: Logger;

  constructor(name: string, open: (metadata: grpc.Metadata) => grpc.ClientReadableStream<T>, handlers: StreamHandlers<T>, logger: Logger, backoff: BackoffOptions | undefined) {
    this.#name = name;
    this.#open = open;
    this.#handlers = handlers;
    this.#logger = logger;
    this.#backoff = new Backoff(backoff);
    this.#start();
  }

  get connected(): boolean {
    return this.#connected;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const call = this.#call;
    this.#call = undefined;
    this.#connected = false;
    call?.cancel();
  }

  #start(): void {
    if (this.#closed) return;
    let call: grpc.ClientReadableStream<T>;
    try {
      call = this.#open(workloadApiMetadata());
    } catch (err) {
      this.#ended(`cannot start the call: ${(err as Error).message}`, undefined);
      return;
    }
    this.#call = call;
    call.on('data', (message: T) => {
      if (call !== this.#call) return;
      if (!this.#connected) {
        this.#connected = true;
        this.#backoff.reset();
        if (this.#failures > 0) {
          this.#logger.info({ stream: this.#name, failedAttempts: this.#failures, lastError: this.#lastError }, 'Workload API stream reconnected');
        } else {
          this.#logger.debug({ stream: this.#name }, 'Workload API stream open');
        }
        this.#failures = 0;
      }
      try {
        this.#handlers.onMessage(message);
      } catch (err) {
        this.#logger.error({ stream: this.#name, err: (err as Error).message }, 'Workload API message handler failed');
      }
    });
    // The status event carries the same information; without a listener 'error' would throw.
    call.on('error', () => undefined);
    call.on('status', (status: grpc.StatusObject) => {
      if (call !== this.#call) return;
      this.#ended(describeStatus(status), status.code);
    });
  }

  #ended(reason: string, code: grpc.status | undefined): void {
    const wasConnected = this.#connected;
    this.#call = undefined;
    this.#connected = false;
    if (this.#closed) return;
    this.#lastError = reason;
    this.#failures += 1;
    const permanent = code !== undefined && PERMANENT_CODES.has(code);
    const delay = permanent ? this.#backoff.maxMs : this.#backoff.next();
    const fields = { stream: this.#name, reason, attempt: this.#failures, retryInMs: delay };
    if (permanent) {
      this.#logger.error(fields, 'Workload API refused the stream; this is not expected to heal by itself, retrying slowly');
    } else {
      this.#logger.warn(fields, wasConnected ? 'Workload API stream disconnected; reconnecting' : 'Workload API stream could not be opened; retrying');
    }
    try {
      this.#handlers.onDisconnect?.(reason);
    } catch (err) {
      this.#logger.error({ stream: this.#name, err: (err as Error).message }, 'Workload API disconnect handler failed');
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#start();
    }, delay);
    this.#timer.unref();
  }
}

/**
 * One channel to the Workload API endpoint and the streams opened on it. Nothing is sent until a
 * watch starts; closing the client closes every watch.
 */
export class WorkloadApiClient {
  readonly address: WorkloadApiAddress;
  readonly #client: SpiffeWorkloadAPIClient;
  readonly #logger: Logger;
  readonly #backoff: BackoffOptions | undefined;
  readonly #watches = new Set<StreamWatch>();

  constructor(options: WorkloadApiClientOptions) {
    this.address = typeof options.address === 'string' ? parseWorkloadApiAddress(options.address) : options.address;
    this.#logger = options.logger.child({ workloadApi: this.address.uri });
    this.#backoff = options.backoff;
    const backoff = new Backoff(options.backoff);
    const Client = workloadApiProto().SpiffeWorkloadAPI;
    this.#client = new Client(this.address.target, grpc.credentials.createInsecure(), {
      // The channel's own reconnect backoff must not outgrow ours, or a returning agent is
      // noticed late.
      'grpc.initial_reconnect_backoff_ms': backoff.initialMs,
      'grpc.max_reconnect_backoff_ms': backoff.maxMs,
      // SVIDs and bundles are small; a larger message is not what an agent sends.
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
    });
  }

  /** FetchX509SVID: the workload's X509-SVIDs with their bundles, pushed on every change. */
  watchX509Svids(handlers: StreamHandlers<X509SVIDResponse__Output>): StreamWatch {
    return this.#watch('FetchX509SVID', (md) => this.#client.FetchX509SVID({}, md), handlers);
  }

  /** FetchX509Bundles: the X.509 bundles of every trusted trust domain, pushed on every change. */
  watchX509Bundles(handlers: StreamHandlers<X509BundlesResponse__Output>): StreamWatch {
    return this.#watch('FetchX509Bundles', (md) => this.#client.FetchX509Bundles({}, md), handlers);
  }

  /** FetchJWTBundles: JWK sets of every trusted trust domain, pushed on every change. */
  watchJwtBundles(handlers: StreamHandlers<JWTBundlesResponse__Output>): StreamWatch {
    return this.#watch('FetchJWTBundles', (md) => this.#client.FetchJWTBundles({}, md), handlers);
  }

  /** Closes every watch and the channel. */
  close(): void {
    for (const watch of this.#watches) watch.close();
    this.#watches.clear();
    this.#client.close();
  }

  #watch<T>(name: string, open: (metadata: grpc.Metadata) => grpc.ClientReadableStream<T>, handlers: StreamHandlers<T>): StreamWatch {
    const stream = new ReconnectingStream(name, open, handlers, this.#logger, this.#backoff);
    const watch: StreamWatch = {
      get connected() {
        return stream.connected;
      },
      get lastError() {
        return stream.lastError;
      },
      close: () => {
        stream.close();
        this.#watches.delete(watch);
      },
    };
    this.#watches.add(watch);
    return watch;
  }
}
