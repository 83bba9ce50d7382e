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
 * arrives); see workload-api-stream.ts. Each disconnect and reconnect is logged with its reason;
 * messages are never logged, since they carry private keys.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from '../observability/logger.js';
import { LOADER_OPTIONS } from '../protocol/proto.js';
import type { JWTBundlesResponse__Output } from '../gen/JWTBundlesResponse.js';
import type { SpiffeWorkloadAPIClient } from '../gen/SpiffeWorkloadAPI.js';
import type { ProtoGrpcType as WorkloadProtoType } from '../gen/workload.js';
import type { X509BundlesResponse__Output } from '../gen/X509BundlesResponse.js';
import type { X509SVIDResponse__Output } from '../gen/X509SVIDResponse.js';
import { Backoff, ReconnectingStream, type BackoffOptions, type StreamHandlers, type StreamWatch } from './workload-api-stream.js';

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

/** The Workload API definitions, loaded with the broker's LOADER_OPTIONS (the flags of `npm run gen`). */
export function workloadApiProto(): WorkloadProtoType {
  cachedProto ??= grpc.loadPackageDefinition(loadSync(WORKLOAD_PROTO_FILE, LOADER_OPTIONS)) as unknown as WorkloadProtoType;
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
    const stream = new ReconnectingStream(name, () => open(workloadApiMetadata()), handlers, this.#logger, this.#backoff);
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
