/**
 * A whole broker for integration tests: test-time PKI (a.test, federated b.test), a migrated
 * database of the requested kind, a fresh KEK, gRPC over real mTLS, the HTTP port for the JWKS,
 * and clients for a few workloads. The lifecycle clock can be moved forward.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminClient } from '../../src/client/admin-client.js';
import { BrokerClient, type ConnectOptions } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import type { Logger } from '../../src/observability/logger.js';
import { silentLogger } from '../../src/observability/logger.js';
import { startTaskBroker, type RunningTaskBroker, type TaskBrokerOptions } from '../../src/app/broker.js';
import type { TrustBundleSet } from '../../src/spiffe/bundle.js';
import type { Store, StoreKind } from '../../src/store/database.js';
import { migrate } from '../../src/store/migrate.js';
import { KeyEncryptionKey, generateKekBase64 } from '../../src/tokens/kek.js';
import { StaticX509SvidSource, tlsIdentityFrom } from '../../src/spiffe/x509-source.js';
import { createTestDatabase, type TestDatabase } from './db.js';
import { permissivePolicySource } from './policy.js';
import { bundleSet, pemOf, trustDomainPki, type PemSvid, type TrustDomainPki } from './pki.js';

export const BROKER_ID = 'spiffe://a.test/task-broker';
export const WORKER = 'spiffe://a.test/ns/demo/sa/worker';
export const API = 'spiffe://a.test/ns/billing/sa/invoice-api';
export const STRANGER = 'spiffe://a.test/ns/demo/sa/stranger';
export const PARTNER = 'spiffe://b.test/ns/jobs/sa/reporter';

export class MutableClock {
  #offsetMs = 0;
  now = (): Date => new Date(Date.now() + this.#offsetMs);
  advance(ms: number): void {
    this.#offsetMs += ms;
  }
}

export interface TestBroker {
  broker: RunningTaskBroker;
  database: TestDatabase;
  clock: MutableClock;
  address: string;
  jwksUrl: string;
  /** http://host:port of the ops HTTP listener (/healthz, /readyz, /metrics). */
  opsUrl: string;
  a: TrustDomainPki;
  b: TrustDomainPki;
  /** The trust bundles the broker verifies callers against (a.test and b.test). */
  bundles: TrustBundleSet;
  /** A connected client presenting a fresh SVID for `spiffeId` (a.test or b.test). */
  client(spiffeId: string): Promise<BrokerClient>;
  /** A connected admin client presenting a fresh SVID for `spiffeId`. */
  adminClient(spiffeId: string): Promise<AdminClient>;
  /** The PEM SVID of the most recent client() for `spiffeId`. */
  svidOf(spiffeId: string): PemSvid;
  /** Stops the broker and starts a new one on the same database, keys and PKI. */
  restart(): Promise<void>;
  /**
   * Another replica on the same database (PGlite: the same instance), with the same KEK, PKI and
   * policy, on `port` (0: any); its clients are made like client() and adminClient().
   */
  startReplica(options?: { port?: number }): Promise<TestReplica>;
  close(): Promise<void>;
}

export interface TestReplica {
  broker: RunningTaskBroker;
  address: string;
  port: number;
  client(spiffeId: string): Promise<BrokerClient>;
  adminClient(spiffeId: string): Promise<AdminClient>;
  /** Stops the replica (its clients too); the database stays. */
  close(): Promise<void>;
}

export interface TestBrokerOptions extends Partial<
  Pick<
    TaskBrokerOptions,
    | 'limits'
    | 'tokenAlg'
    | 'sweepIntervalMs'
    | 'policy'
    | 'readinessIntervalMs'
    | 'readinessChecks'
    | 'databasePingTimeoutMs'
    | 'admission'
    | 'revocationPollIntervalMs'
    | 'revocationHeartbeatIntervalMs'
    | 'revocationStreamLimits'
  >
> {
  logger?: Logger;
}

export async function startTestBroker(kind: StoreKind, options: TestBrokerOptions = {}): Promise<TestBroker> {
  const [a, b] = await Promise.all([trustDomainPki('a.test'), trustDomainPki('b.test')]);
  const serverSvid = await pemOf(await mintX509Svid(a.root, BROKER_ID));
  const identity = new StaticX509SvidSource(tlsIdentityFrom(serverSvid.certChainPem, serverSvid.keyPem));
  const bundles = bundleSet(a, b);
  const dataDir = kind === 'pglite' ? await mkdtemp(join(tmpdir(), 'tb-pglite-')) : undefined;
  const database = await createTestDatabase(kind, dataDir);
  const kek = KeyEncryptionKey.fromBase64(generateKekBase64());
  const clock = new MutableClock();
  const logger = options.logger ?? silentLogger();
  const clients: Array<{ close(): void }> = [];
  const svids = new Map<string, PemSvid>();

  const start = async (shared?: { store: Store; port: number }) => {
    const store = shared?.store ?? (await database.open());
    if (!shared) await migrate(store.db);
    return startTaskBroker({
      logger,
      identity,
      bundles,
      store,
      kek,
      policy: options.policy ?? permissivePolicySource(),
      host: '127.0.0.1',
      port: shared?.port ?? 0,
      http: { host: '127.0.0.1', port: 0 },
      migrate: false,
      tokenAlg: options.tokenAlg,
      limits: options.limits,
      sweepIntervalMs: options.sweepIntervalMs ?? 0,
      readinessIntervalMs: options.readinessIntervalMs,
      readinessChecks: options.readinessChecks,
      databasePingTimeoutMs: options.databasePingTimeoutMs,
      admission: options.admission,
      revocationPollIntervalMs: options.revocationPollIntervalMs,
      revocationHeartbeatIntervalMs: options.revocationHeartbeatIntervalMs,
      revocationStreamLimits: options.revocationStreamLimits,
      clock: clock.now,
    });
  };

  /** Mints a fresh SVID for `spiffeId` (a.test or b.test) and connects a client with it. */
  const connectAs = async <C extends { close(): void }>(
    spiffeId: string,
    Client: new (options: ConnectOptions) => C,
    address = t.address,
    into: Array<{ close(): void }> = clients,
  ): Promise<C> => {
    const pki = spiffeId.startsWith('spiffe://b.test/') ? b : a;
    const svid = await pemOf(await mintX509Svid(pki.root, spiffeId));
    svids.set(spiffeId, svid);
    const client = new Client({
      address,
      credentials: svidChannelCredentials({ ...svid, bundle: a.root.pem, serverId: BROKER_ID }),
      channelOptions: svidChannelOptions(),
    });
    into.push(client);
    return client;
  };

  let broker = await start();
  const t: TestBroker = {
    broker,
    database,
    clock,
    a,
    b,
    bundles,
    address: `127.0.0.1:${broker.port}`,
    jwksUrl: `http://127.0.0.1:${broker.httpPort}/.well-known/jwks.json`,
    opsUrl: `http://127.0.0.1:${broker.httpPort}`,
    client: (spiffeId) => connectAs(spiffeId, BrokerClient),
    adminClient: (spiffeId) => connectAs(spiffeId, AdminClient),
    svidOf(spiffeId) {
      const svid = svids.get(spiffeId);
      if (!svid) throw new Error(`no client for ${spiffeId} yet`);
      return svid;
    },
    async restart() {
      for (const c of clients.splice(0)) c.close();
      await broker.close(1_000);
      broker = await start();
      t.broker = broker;
      t.address = `127.0.0.1:${broker.port}`;
      t.jwksUrl = `http://127.0.0.1:${broker.httpPort}/.well-known/jwks.json`;
      t.opsUrl = `http://127.0.0.1:${broker.httpPort}`;
    },
    async startReplica(replicaOptions = {}) {
      // PGlite is one in-process instance: the replicas share it (and leave closing it to the first broker).
      const store: Store = database.kind === 'pglite' ? { ...broker.store, close: () => Promise.resolve() } : await database.open();
      const replica = await start({ store, port: replicaOptions.port ?? 0 });
      const address = `127.0.0.1:${replica.port}`;
      const own: Array<{ close(): void }> = [];
      return {
        broker: replica,
        address,
        port: replica.port,
        client: (spiffeId) => connectAs(spiffeId, BrokerClient, address, own),
        adminClient: (spiffeId) => connectAs(spiffeId, AdminClient, address, own),
        close: async () => {
          for (const c of own.splice(0)) c.close();
          await replica.close(1_000);
        },
      };
    },
    async close() {
      for (const c of clients.splice(0)) c.close();
      await broker.close(1_000);
      await database.drop();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return t;
}
