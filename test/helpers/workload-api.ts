/**
 * A fake SPIRE agent: a real grpc-js server for the SPIFFE Workload API on a real unix socket,
 * serving whatever X509-SVID and bundle messages the test sets, and refusing calls without the
 * `workload.spiffe.io: true` metadata with INVALID_ARGUMENT as SPIRE does. It can be stopped and
 * started again on the same socket path.
 */
import * as grpc from '@grpc/grpc-js';
import { rm } from 'node:fs/promises';
import { webcrypto } from 'node:crypto';
import type { IssuedCertificate } from '../../src/devca/certificates.js';
import type { X509BundlesResponse } from '../../src/gen/X509BundlesResponse.js';
import type { X509SVID } from '../../src/gen/X509SVID.js';
import type { X509SVIDResponse } from '../../src/gen/X509SVIDResponse.js';
import type { JWTBundlesResponse } from '../../src/gen/JWTBundlesResponse.js';
import { parseCertificate } from '../../src/spiffe/certificate.js';
import { WORKLOAD_API_HEADER, workloadApiProto } from '../../src/spiffe/workload-api.js';

/** Concatenated DER, the Workload API's encoding of chains and bundles. */
export function derOf(...certs: IssuedCertificate[]): Buffer {
  return Buffer.concat(certs.map((c) => c.der));
}

/** The X509SVID message for `svid`: chain (leaf first) and PKCS#8 DER key, with its trust domain's CAs. */
export async function x509SvidMessage(
  svid: IssuedCertificate,
  bundle: IssuedCertificate[],
): Promise<Required<Omit<X509SVID, 'hint'>> & { x509SvidKey: Buffer; x509Svid: Buffer }> {
  return {
    spiffeId: parseCertificate(svid.der).uriSans[0] ?? '',
    x509Svid: derOf(svid, ...svid.intermediates),
    x509SvidKey: Buffer.from(await webcrypto.subtle.exportKey('pkcs8', svid.keys.privateKey)),
    bundle: derOf(...bundle),
  };
}

type Stream<Req, Res> = grpc.ServerWritableStream<Req, Res>;

export interface FakeWorkloadApi {
  readonly socketPath: string;
  /** `unix://` + the socket path. */
  readonly address: string;
  /** Sets the FetchX509SVID state and sends it on every open stream (and first thing on new ones). */
  setX509Svid(response: X509SVIDResponse): void;
  /** Sets the FetchX509Bundles state likewise. */
  setX509Bundles(response: X509BundlesResponse): void;
  setJwtBundles(response: JWTBundlesResponse): void;
  /** The `workload.spiffe.io` values of every call received, in order ("" when absent). */
  readonly headersSeen: string[];
  /** Calls refused for lacking the header. */
  readonly refused: number;
  /** Stream calls opened since the fake was created, per RPC. */
  readonly opened: Record<string, number>;
  /** Streams open right now. */
  openStreams(): number;
  /** Stops the server, cutting every stream (like an agent that dies). */
  stop(): Promise<void>;
  /** Starts it again on the same socket path. */
  start(): Promise<void>;
}

export async function startFakeWorkloadApi(socketPath: string): Promise<FakeWorkloadApi> {
  const state: { svid?: X509SVIDResponse; bundles?: X509BundlesResponse; jwt?: JWTBundlesResponse } = {};
  const streams = {
    svid: new Set<Stream<unknown, X509SVIDResponse>>(),
    bundles: new Set<Stream<unknown, X509BundlesResponse>>(),
    jwt: new Set<Stream<unknown, JWTBundlesResponse>>(),
  };
  const headersSeen: string[] = [];
  const opened: Record<string, number> = {};
  let refused = 0;
  let server: grpc.Server | undefined;

  /** Like SPIRE's agent: no header, no service. */
  const admit = (call: grpc.ServerWritableStream<unknown, unknown>, rpc: string): boolean => {
    const value = call.metadata.get(WORKLOAD_API_HEADER).map(String);
    headersSeen.push(value.join(','));
    if (value.length !== 1 || value[0] !== 'true') {
      refused += 1;
      call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: 'security header missing from request' });
      return false;
    }
    opened[rpc] = (opened[rpc] ?? 0) + 1;
    return true;
  };

  const follow = <Res>(set: Set<Stream<unknown, Res>>, call: Stream<unknown, Res>, current: Res | undefined) => {
    set.add(call);
    call.on('cancelled', () => set.delete(call));
    call.on('close', () => set.delete(call));
    if (current) call.write(current);
  };

  const start = async () => {
    await rm(socketPath, { force: true });
    const s = new grpc.Server();
    s.addService(workloadApiProto().SpiffeWorkloadAPI.service, {
      FetchX509SVID: (call: Stream<unknown, X509SVIDResponse>) => {
        if (admit(call, 'FetchX509SVID')) follow(streams.svid, call, state.svid);
      },
      FetchX509Bundles: (call: Stream<unknown, X509BundlesResponse>) => {
        if (admit(call, 'FetchX509Bundles')) follow(streams.bundles, call, state.bundles);
      },
      FetchJWTBundles: (call: Stream<unknown, JWTBundlesResponse>) => {
        if (admit(call, 'FetchJWTBundles')) follow(streams.jwt, call, state.jwt);
      },
      FetchJWTSVID: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'not in this fake' }),
      ValidateJWTSVID: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'not in this fake' }),
    });
    await new Promise<void>((resolve, reject) =>
      s.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    server = s;
  };

  const broadcast = <Res>(set: Set<Stream<unknown, Res>>, message: Res) => {
    for (const call of set) call.write(message);
  };

  await start();
  return {
    socketPath,
    address: `unix://${socketPath}`,
    headersSeen,
    opened,
    get refused() {
      return refused;
    },
    setX509Svid(response) {
      state.svid = response;
      broadcast(streams.svid, response);
    },
    setX509Bundles(response) {
      state.bundles = response;
      broadcast(streams.bundles, response);
    },
    setJwtBundles(response) {
      state.jwt = response;
      broadcast(streams.jwt, response);
    },
    openStreams: () => streams.svid.size + streams.bundles.size + streams.jwt.size,
    async stop() {
      const s = server;
      server = undefined;
      if (!s) return;
      s.forceShutdown();
      for (const set of Object.values(streams)) set.clear();
      await rm(socketPath, { force: true });
    },
    start,
  };
}
