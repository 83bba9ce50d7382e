/**
 * A load generator's connections: for each connection index, the worker's and the API's
 * identities and their clients (grpc-js channels for the echo server and the broker, undici
 * HTTPS pools for oidc-provider), plus what has been prepared for it (tasks, tokens).
 */
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';
import { Pool } from 'undici';
import { BrokerClient } from '../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../src/client/credentials.js';
import { BROKER_ID, thumbprintOfPem, type ConnectionSpec, type TargetSpec } from './common.js';

function pemOf(path: string): string {
  return readFileSync(path, 'utf8');
}

export interface Identity {
  spiffeId: string;
  certPem: string;
  keyPem: string;
  thumbprint: string;
}

function identity(files: ConnectionSpec['worker']): Identity {
  const certPem = pemOf(files.certPath);
  return { spiffeId: files.spiffeId, certPem, keyPem: pemOf(files.keyPath), thumbprint: thumbprintOfPem(certPem) };
}

/** Each channel on its own TCP connection: without this grpc-js shares subchannels between clients of the same target. */
const OWN_CONNECTION: grpc.ChannelOptions = { 'grpc.use_local_subchannel_pool': 1 };

/** What the generator holds for one connection index. */
export interface Conn {
  index: number;
  /** Which generator holds it (for unique task resources across generators). */
  generator: number;
  worker: Identity;
  api: Identity;
  echo?: grpc.Client;
  brokerWorker?: BrokerClient;
  brokerApi?: BrokerClient;
  /** HTTPS pools (created at prepare, sized to the calls in flight per connection). */
  httpsWorker?: Pool;
  httpsApi?: Pool;
  /** Tasks to issue tokens for, and tokens to verify or introspect; used round-robin. */
  tasks: Array<{ taskId: string; taskHash: string }>;
  tokens: Array<{ token: string; taskHash: string }>;
  next: number;
  /** Sequence for unique task resources. */
  created: number;
}

export class LoadConnections {
  readonly conns: Conn[];
  /** Connections of all generators together (what shares the target's state, e.g. oidc-provider's token store). */
  readonly totalConnections: number;
  readonly #target: TargetSpec;
  /** The target's CA bundle (PEM), read once. */
  readonly #bundle: string;
  #httpsPoolSize = 0;

  constructor(t: TargetSpec, specs: ConnectionSpec[], generator: number, totalConnections: number) {
    this.#target = t;
    this.totalConnections = totalConnections;
    const bundle = pemOf(t.bundlePath);
    this.#bundle = bundle;
    this.conns = specs.map((spec) => {
      const worker = identity(spec.worker);
      const api = identity(spec.api);
      const conn: Conn = { index: spec.index, generator, worker, api, tasks: [], tokens: [], next: 0, created: 0 };
      const creds = (who: Identity) => svidChannelCredentials({ certChainPem: who.certPem, keyPem: who.keyPem, bundle, serverId: BROKER_ID });
      if (t.kind === 'echo') {
        conn.echo = new grpc.Client(t.address, creds(worker), { ...svidChannelOptions(), ...OWN_CONNECTION });
      } else if (t.kind === 'broker') {
        conn.brokerWorker = new BrokerClient({ address: t.address, credentials: creds(worker), channelOptions: OWN_CONNECTION });
        conn.brokerApi = new BrokerClient({ address: t.address, credentials: creds(api), channelOptions: OWN_CONNECTION });
      }
      return conn;
    });
  }

  /** HTTPS pools of `perConnection` sockets for every identity (made again when the size changes). */
  async sizeHttpsPools(perConnection: number): Promise<void> {
    if (this.#httpsPoolSize === perConnection) return;
    for (const c of this.conns) {
      await Promise.all([c.httpsWorker?.close(), c.httpsApi?.close()]);
      c.httpsWorker = this.#httpsPool(c.worker, perConnection);
      c.httpsApi = this.#httpsPool(c.api, perConnection);
    }
    this.#httpsPoolSize = perConnection;
  }

  async close(): Promise<void> {
    for (const c of this.conns) {
      c.echo?.close();
      c.brokerWorker?.close();
      c.brokerApi?.close();
      await Promise.all([c.httpsWorker?.close(), c.httpsApi?.close()]);
    }
  }

  #httpsPool(who: Identity, connections: number): Pool {
    const ca = this.#bundle;
    return new Pool(`https://${this.#target.address}`, {
      connections,
      pipelining: 1,
      keepAliveTimeout: 120_000,
      connect: {
        ca,
        cert: who.certPem,
        key: who.keyPem,
        rejectUnauthorized: true,
        // The server's certificate is the broker's SVID: a URI SAN and no DNS name.
        checkServerIdentity: (_host: string, cert: PeerCertificate) =>
          (cert.subjectaltname ?? '').split(', ').includes(`URI:${BROKER_ID}`) ? undefined : new Error(`server is not ${BROKER_ID}`),
      },
    });
  }
}
