/**
 * The broker on the SPIFFE Workload API: a fake SPIRE agent (real grpc-js server, real unix
 * socket, certificates minted at test time) hands out the broker's SVID and the trust bundles;
 * the broker serves with them, follows rotations and federation changes, survives the agent
 * going away, and refuses unusable updates.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelOptions } from '../../src/client/credentials.js';
import { createRootCa, mintX509Svid, type IssuedCertificate } from '../../src/devca/certificates.js';
import { startTaskBroker, type RunningTaskBroker } from '../../src/app/broker.js';
import { certificateThumbprint, parseDerCertificates, parsePemCertificates } from '../../src/spiffe/certificate.js';
import { parseWorkloadApiAddress, WorkloadApiClient, workloadApiProto, WORKLOAD_API_HEADER } from '../../src/spiffe/workload-api.js';
import { Backoff } from '../../src/spiffe/workload-api-stream.js';
import { WorkloadApiSource, type WorkloadApiSourceOptions } from '../../src/spiffe/workload-api-source.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { runCli, startCli } from '../helpers/cli.js';
import { createTestDatabase } from '../helpers/db.js';
import { capturedLogger } from '../helpers/logs.js';
import { permissivePolicySource } from '../helpers/policy.js';
import { pemOf, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { derOf, startFakeWorkloadApi, x509SvidMessage, type FakeWorkloadApi } from '../helpers/workload-api.js';

const BROKER_ID = 'spiffe://a.test/task-broker';
const FAST_BACKOFF = { initialMs: 50, maxMs: 400 };

const cleanups = cleanupsAfterEach();
const tempDir = () => cleanups.tempDir('tb-wl-');

async function fakeAgent(): Promise<FakeWorkloadApi> {
  const agent = await startFakeWorkloadApi(join(await tempDir(), 'agent.sock'));
  cleanups.push(() => agent.stop());
  return agent;
}

async function connectSource(options: WorkloadApiSourceOptions): Promise<WorkloadApiSource> {
  const source = await WorkloadApiSource.connect({ backoff: FAST_BACKOFF, ...options });
  cleanups.push(() => source.close());
  return source;
}

/** A fake agent handing out `svid` as the broker's SVID and the root of `pki` as the only bundle. */
async function agentServing(pki: TrustDomainPki, svid: IssuedCertificate): Promise<FakeWorkloadApi> {
  const agent = await fakeAgent();
  agent.setX509Svid(await svidResponse(svid, [pki.root]));
  agent.setX509Bundles(bundlesResponse({ [pki.name]: [pki.root] }));
  return agent;
}

/** A whole broker (on a fresh PostgreSQL database) whose SVID and bundles come from `source`; it may start before the first SVID. */
async function brokerOn(source: WorkloadApiSource, logger: WorkloadApiSourceOptions['logger']): Promise<RunningTaskBroker> {
  const database = await createTestDatabase('postgres');
  cleanups.push(() => database.drop());
  const broker = await startTaskBroker({
    logger,
    identity: source,
    bundles: source.bundles,
    store: await database.open(),
    kek: KeyEncryptionKey.fromBase64(generateKekBase64()),
    policy: permissivePolicySource(),
    issuer: BROKER_ID,
    migrate: true,
    sweepIntervalMs: 0,
    host: '127.0.0.1',
    port: 0,
    refusedConnectionLingerMs: 2_000,
  });
  cleanups.push(() => broker.close(1_000));
  return broker;
}

/** Polls until `fn` returns something other than false without throwing, or fails with its last error. */
async function eventually<T>(fn: () => T | Promise<T>, timeoutMs = 10_000): Promise<Exclude<T, false>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await fn();
      if (value !== false) return value as Exclude<T, false>;
      throw new Error('condition not met yet');
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A client presenting `svid`, trusting `roots` for the broker, recording each server certificate it sees. */
function clientWith(port: number, roots: IssuedCertificate[], svid: { certChainPem: string; keyPem: string }, seen: string[] = []): BrokerClient {
  const credentials = grpc.credentials.createSsl(Buffer.from(roots.map((r) => r.pem).join('')), Buffer.from(svid.keyPem), Buffer.from(svid.certChainPem), {
    checkServerIdentity: (_host, cert) => {
      seen.push(certificateThumbprint(cert.raw));
      return undefined;
    },
  });
  const client = new BrokerClient({ address: `127.0.0.1:${port}`, credentials, channelOptions: svidChannelOptions() });
  cleanups.push(() => client.close());
  return client;
}

async function workload(ca: IssuedCertificate, spiffeId: string) {
  return pemOf(await mintX509Svid(ca, spiffeId));
}

/** A FetchX509SVID message with one SVID for the broker and the given bundles. */
async function svidResponse(svid: IssuedCertificate, own: IssuedCertificate[], federated: Record<string, IssuedCertificate[]> = {}) {
  return {
    svids: [await x509SvidMessage(svid, own)],
    federatedBundles: Object.fromEntries(Object.entries(federated).map(([td, cas]) => [`spiffe://${td}`, derOf(...cas)])),
  };
}

function bundlesResponse(bundles: Record<string, IssuedCertificate[]>) {
  return { bundles: Object.fromEntries(Object.entries(bundles).map(([td, cas]) => [`spiffe://${td}`, derOf(...cas)])) };
}

describe('SPIFFE_ENDPOINT_SOCKET / --workload-api addresses', () => {
  it('accepts the forms of the Workload Endpoint spec', () => {
    expect(parseWorkloadApiAddress('unix:///run/spire/sockets/agent.sock')).toEqual({
      uri: 'unix:///run/spire/sockets/agent.sock',
      transport: 'unix',
      target: 'unix:///run/spire/sockets/agent.sock',
    });
    expect(parseWorkloadApiAddress('unix:/tmp/agent.sock').target).toBe('unix:///tmp/agent.sock');
    expect(parseWorkloadApiAddress('unix:///tmp/with%20space.sock').target).toBe('unix:///tmp/with space.sock');
    expect(parseWorkloadApiAddress('tcp://127.0.0.1:8000')).toMatchObject({ transport: 'tcp', target: 'ipv4:127.0.0.1:8000' });
    expect(parseWorkloadApiAddress('tcp://[::1]:8000').target).toBe('ipv6:[::1]:8000');
  });

  it.each([
    ['', /is empty/],
    ['/run/spire/sockets/agent.sock', /no scheme/],
    ['unix://localhost/run/agent.sock', /must not name a host/],
    ['unix:run/agent.sock', /absolute path/],
    ['unix:///run/agent.sock?x=1', /query or fragment/],
    ['unix:///run/spire/', /not a directory/],
    ['tcp://localhost:8000', /IP address, not a host name/],
    ['tcp://127.0.0.1', /needs a port/],
    ['tcp://127.0.0.1:8000/foo', /without path/],
    ['http://127.0.0.1:8000', /unsupported scheme "http:"/],
  ])('refuses %j', (value, reason) => {
    expect(() => parseWorkloadApiAddress(value)).toThrow(reason);
    expect(() => parseWorkloadApiAddress(value)).toThrow(/expected unix:\/\/\/path\/to\/agent.sock or tcp:\/\/IP:PORT/);
  });

  it('backs off exponentially with jitter up to the maximum, and starts over after a reset', () => {
    const low = new Backoff({ initialMs: 100, maxMs: 30_000 }, () => 0);
    expect([1, 2, 3, 4].map(() => low.next())).toEqual([50, 100, 200, 400]);
    const high = new Backoff({ initialMs: 100, maxMs: 30_000 }, () => 1);
    const delays = Array.from({ length: 14 }, () => high.next());
    expect(delays.slice(0, 3)).toEqual([100, 200, 400]);
    expect(delays.at(-1)).toBe(30_000);
    high.reset();
    expect(high.next()).toBe(100);
  });
});

describe('the Workload API client', () => {
  it('sends workload.spiffe.io: true on every call; the agent refuses a call without it with INVALID_ARGUMENT', async () => {
    const agent = await fakeAgent();
    const { logger } = capturedLogger();
    const a = await trustDomainPki('a.test');
    agent.setX509Bundles(bundlesResponse({ 'a.test': [a.root] }));
    agent.setJwtBundles({ bundles: { 'spiffe://a.test': Buffer.from('{"keys":[]}') } });

    // A client that forgets the header is refused, as SPIRE refuses it.
    const Raw = workloadApiProto().SpiffeWorkloadAPI;
    const raw = new Raw(agent.address, grpc.credentials.createInsecure());
    cleanups.push(() => raw.close());
    const refusal = await new Promise<grpc.StatusObject>((resolve) => {
      const call = raw.FetchX509Bundles({});
      call.on('error', () => undefined);
      call.on('status', resolve);
    });
    expect(refusal.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(agent.refused).toBe(1);

    const client = new WorkloadApiClient({ address: agent.address, logger, backoff: FAST_BACKOFF });
    cleanups.push(() => client.close());
    const x509: string[][] = [];
    const jwt: string[][] = [];
    const bundleWatch = client.watchX509Bundles({ onMessage: (m) => x509.push(Object.keys(m.bundles)) });
    client.watchJwtBundles({ onMessage: (m) => jwt.push(Object.keys(m.bundles)) });
    await eventually(() => x509.length === 1 && jwt.length === 1);
    expect(x509[0]).toEqual(['spiffe://a.test']);
    expect(jwt[0]).toEqual(['spiffe://a.test']);
    expect(bundleWatch.connected).toBe(true);
    expect(parseDerCertificates(derOf(a.root, a.intermediate)).map((c) => c.der)).toEqual([a.root.der, a.intermediate.der]);
    expect(agent.headersSeen).toEqual(['', 'true', 'true']);
    expect(WORKLOAD_API_HEADER).toBe('workload.spiffe.io');
  });
});

describe('the broker on the Workload API', () => {
  it('does not serve until the first SVID arrives, then serves with it', async () => {
    const agent = await fakeAgent();
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const source = await connectSource({ address: agent.address, logger });
    const broker = await brokerOn(source, logger);
    expect(source.ready()).toBe(false);
    expect(source.current()).toBeUndefined();
    await expect(source.waitUntilReady(200)).rejects.toThrow(/no usable X509-SVID from the Workload API at unix:\/\/.*agent.sock within 200 ms/);

    const client = clientWith(broker.port, [a.root], await workload(a.root, 'spiffe://a.test/w'));
    await expect(client.whoAmI({ deadlineMs: 2_000 })).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });

    const svid = await mintX509Svid(a.root, BROKER_ID);
    agent.setX509Svid(await svidResponse(svid, [a.root]));
    const identity = await source.waitUntilReady(5_000);
    expect(identity.spiffeId.toString()).toBe(BROKER_ID);
    expect(source.ready()).toBe(true);
    expect(source.bundles.trustDomains()).toEqual(['a.test']);
    expect((await eventually(() => client.whoAmI({ deadlineMs: 2_000 }))).spiffeId).toBe('spiffe://a.test/w');

    const status = source.status();
    expect(status).toMatchObject({ ready: true, connected: true, spiffeId: BROKER_ID, rejectedUpdates: 0 });
    expect(status.svidNotAfter?.getTime()).toBe(svid.certificate.notAfter.getTime());
    expect(status.lastSvidUpdate).toBeInstanceOf(Date);
    expect(Object.keys(status.bundles)).toEqual(['a.test']);
    expect(lines().some((l) => l.msg === 'X509-SVID received from the Workload API')).toBe(true);
    // Keys never reach the log.
    expect(JSON.stringify(lines())).not.toMatch(/PRIVATE KEY|x509SvidKey/);
  });

  it('follows a rotation to a new CA and a federation change: open connections keep working, new ones see the new SVID', async () => {
    const agent = await fakeAgent();
    const { logger, lines } = capturedLogger();
    const [a, b] = await Promise.all([trustDomainPki('a.test'), trustDomainPki('b.test')]);
    const newCa = await createRootCa('a.test', { commonName: 'a.test new root' });
    const first = await mintX509Svid(a.root, BROKER_ID);
    agent.setX509Svid(await svidResponse(first, [a.root], { 'b.test': [b.root] }));
    agent.setX509Bundles(bundlesResponse({ 'a.test': [a.root], 'b.test': [b.root] }));
    const source = await connectSource({ address: agent.address, logger });
    await source.waitUntilReady(5_000);
    await eventually(() => agent.opened.FetchX509Bundles === 1 && source.status().lastBundleUpdate !== undefined);
    const broker = await brokerOn(source, logger);
    const roots = [a.root, newCa];

    const seen: string[] = [];
    const open = clientWith(broker.port, roots, await workload(a.root, 'spiffe://a.test/old'), seen);
    expect((await open.whoAmI()).spiffeId).toBe('spiffe://a.test/old');
    const partner = clientWith(broker.port, roots, await workload(b.root, 'spiffe://b.test/partner'));
    expect((await partner.whoAmI()).spiffeId).toBe('spiffe://b.test/partner');
    expect(seen).toEqual([certificateThumbprint(first.der)]);
    const accepted = broker.server.connectionsAccepted;

    // The agent rotates: a new SVID from a new CA; the bundle of a.test holds both roots; b.test is gone.
    const second = await mintX509Svid(newCa, BROKER_ID);
    agent.setX509Svid(await svidResponse(second, [a.root, newCa]));
    agent.setX509Bundles(bundlesResponse({ 'a.test': [a.root, newCa] }));
    const serving = () => parsePemCertificates(source.current()?.certChainPem ?? '')[0]?.thumbprint;
    await eventually(() => serving() === certificateThumbprint(second.der) && source.bundles.getX509Bundle('b.test') === undefined);
    expect(source.bundles.getX509Bundle('a.test')?.authorities).toHaveLength(2);

    // The open connection carries on, on the same connection.
    expect((await open.whoAmI()).spiffeId).toBe('spiffe://a.test/old');
    expect(broker.server.connectionsAccepted).toBe(accepted);
    // A workload with a certificate from the new CA is accepted, and sees the new server SVID.
    const fresh: string[] = [];
    const newcomer = clientWith(broker.port, roots, await workload(newCa, 'spiffe://a.test/new'), fresh);
    expect((await newcomer.whoAmI()).spiffeId).toBe('spiffe://a.test/new');
    expect(fresh).toEqual([certificateThumbprint(second.der)]);
    // The removed trust domain is refused, on its open connection and on a new one.
    await expect(partner.whoAmI()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    const stranger = clientWith(broker.port, roots, await workload(b.root, 'spiffe://b.test/partner2'));
    await expect(stranger.whoAmI()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/b\.test/) });

    const status = source.status();
    expect(Object.keys(status.bundles)).toEqual(['a.test']);
    expect(status.bundles['a.test']?.authorities).toBe(2);
    expect(lines().find((l) => l.msg === 'trust bundles updated from the Workload API' && (l.removed as string[]).includes('b.test'))).toBeDefined();
    expect(lines().some((l) => l.msg === 'X509-SVID rotated by the Workload API')).toBe(true);
  });

  it('keeps serving with the last SVID while the agent is away, reconnects with backoff and picks up later updates', async () => {
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const first = await mintX509Svid(a.root, BROKER_ID);
    const agent = await agentServing(a, first);
    const source = await connectSource({ address: agent.address, logger, staleWarningMs: 300, monitorIntervalMs: 50 });
    await source.waitUntilReady(5_000);
    const broker = await brokerOn(source, logger);
    const me = await workload(a.root, 'spiffe://a.test/w');
    const open = clientWith(broker.port, [a.root], me);
    await open.whoAmI();

    await agent.stop();
    await eventually(() => !source.status().connected);
    expect(source.ready()).toBe(true);
    expect((await open.whoAmI()).spiffeId).toBe('spiffe://a.test/w');
    const meanwhile: string[] = [];
    expect((await clientWith(broker.port, [a.root], me, meanwhile).whoAmI()).spiffeId).toBe('spiffe://a.test/w');
    expect(meanwhile).toEqual([certificateThumbprint(first.der)]);
    const disconnect = await eventually(
      () => lines().find((l) => l.msg === 'Workload API stream disconnected; reconnecting' && l.stream === 'FetchX509SVID') ?? false,
    );
    expect(disconnect.reason).toEqual(expect.any(String));
    await eventually(() => lines().filter((l) => l.msg === 'Workload API stream could not be opened; retrying').length >= 2);
    await eventually(() => lines().some((l) => l.msg === 'no updates from the Workload API for a while; serving with the last SVID until it expires'));
    expect(source.status().disconnectedSince).toBeInstanceOf(Date);

    // The agent is back on the same socket; the client finds it and takes what it sends next.
    await agent.start();
    await eventually(() => source.status().connected);
    expect(lines().some((l) => l.msg === 'Workload API stream reconnected' && l.stream === 'FetchX509SVID')).toBe(true);
    const second = await mintX509Svid(a.root, BROKER_ID);
    agent.setX509Svid(await svidResponse(second, [a.root]));
    const after: string[] = [];
    await eventually(async () => {
      await clientWith(broker.port, [a.root], me, after).whoAmI();
      return after.at(-1) === certificateThumbprint(second.der);
    });
    expect((await open.whoAmI()).spiffeId).toBe('spiffe://a.test/w');
  });

  it('refuses unusable updates and keeps the last good SVID and bundles', async () => {
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const good = await mintX509Svid(a.root, BROKER_ID);
    const agent = await agentServing(a, good);
    const source = await connectSource({ address: agent.address, logger });
    const identity = await source.waitUntilReady(5_000);
    await eventually(() => source.status().lastBundleUpdate !== undefined);
    const bundle = source.bundles.getX509Bundle('a.test');
    const refusals = () => lines().filter((l) => typeof l.msg === 'string' && l.msg.startsWith('Workload API sent an unusable'));

    // Garbage where the chain should be.
    const garbage = await x509SvidMessage(good, [a.root]);
    agent.setX509Svid({ svids: [{ ...garbage, x509Svid: randomBytes(64) }] });
    await eventually(() => refusals().length === 1);
    expect(refusals()[0]?.reason).toMatch(/x509_svid/);

    // A certificate with somebody else's key.
    const other = await mintX509Svid(a.root, BROKER_ID);
    const mismatched = await x509SvidMessage(other, [a.root]);
    agent.setX509Svid({ svids: [{ ...mismatched, x509SvidKey: garbage.x509SvidKey }] });
    await eventually(() => refusals().length === 2);
    expect(refusals()[1]?.reason).toMatch(/do not form a usable pair/);

    // A key that is not PKCS#8 at all.
    agent.setX509Svid({ svids: [{ ...mismatched, x509SvidKey: Buffer.from('not a key') }] });
    await eventually(() => refusals().length === 3);
    expect(refusals()[2]?.reason).toMatch(/not an unencrypted PKCS#8/);

    // A bundle that does not parse, and one that drops the broker's own trust domain.
    agent.setX509Bundles({ bundles: { 'spiffe://a.test': randomBytes(40) } });
    await eventually(() => refusals().length === 4);
    expect(refusals()[3]?.reason).toMatch(/bundle for a.test/);
    agent.setX509Bundles(bundlesResponse({ 'c.test': [a.root] }));
    await eventually(() => refusals().length === 5);
    expect(refusals()[4]?.reason).toMatch(/own trust domain a.test/);

    expect(source.current()).toBe(identity);
    expect(source.bundles.getX509Bundle('a.test')).toBe(bundle);
    expect(source.bundles.trustDomains()).toEqual(['a.test']);
    expect(source.ready()).toBe(true);
    expect(source.status().rejectedUpdates).toBe(5);
    expect(JSON.stringify(lines())).not.toContain(garbage.x509SvidKey.toString('base64').slice(0, 40));
  });

  it('selects the SVID with the configured SPIFFE ID, warns before the SVID expires and is not ready once it has', async () => {
    const agent = await fakeAgent();
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    let offsetMs = 0;
    const clock = () => new Date(Date.now() + offsetMs);
    const other = await x509SvidMessage(await mintX509Svid(a.root, 'spiffe://a.test/something-else'), [a.root]);
    const mine = await mintX509Svid(a.root, BROKER_ID, { ttlMs: 10 * 60_000 });
    agent.setX509Svid({ svids: [other, await x509SvidMessage(mine, [a.root])] });
    const source = await connectSource({ address: agent.address, logger, spiffeId: BROKER_ID, monitorIntervalMs: 20, clock });
    expect((await source.waitUntilReady(5_000)).spiffeId.toString()).toBe(BROKER_ID);

    offsetMs = 9 * 60_000; // less than 20% of its 11 minutes left
    await eventually(() => lines().some((l) => l.msg === 'the SVID expires soon and the Workload API has not rotated it'));
    expect(source.ready()).toBe(true);
    offsetMs = 11 * 60_000;
    expect(source.ready()).toBe(false);
    await eventually(() => lines().some((l) => l.msg === 'the SVID has expired and the Workload API sent no new one; not ready'));
    expect(source.status().ready).toBe(false);
  });
});

describe('task-broker serve --workload-api', () => {
  it('refuses to combine the Workload API with SVID or bundle files, and gives up when no SVID comes in time', async () => {
    const both = await runCli(['serve', '--workload-api', 'unix:///tmp/none.sock', '--svid-cert', 'a.pem', '--svid-key', 'a.key', '--kek', 'x'], {
      env: { TASK_BROKER_BUNDLES: '' },
    });
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/--workload-api \(or SPIFFE_ENDPOINT_SOCKET\) cannot be combined with --svid-cert, --svid-key/);
    const badAddress = await runCli(['serve', '--kek', 'x'], {
      env: { SPIFFE_ENDPOINT_SOCKET: 'tcp://localhost:1', TASK_BROKER_SVID_CERT: '', TASK_BROKER_SVID_KEY: '', TASK_BROKER_BUNDLES: '' },
    });
    expect(badAddress.code).toBe(2);
    expect(badAddress.stderr).toMatch(/--workload-api: .*IP address, not a host name/);

    const agent = await fakeAgent();
    const silent = await runCli(['serve', '--workload-api', agent.address, '--workload-api-timeout', '1s', '--kek', randomBytes(32).toString('base64')], {
      env: { TASK_BROKER_SVID_CERT: '', TASK_BROKER_SVID_KEY: '', TASK_BROKER_BUNDLES: '' },
    });
    expect(silent.code).toBe(1);
    expect(silent.stderr).toMatch(/no usable X509-SVID from the Workload API at unix:\/\/.*within 1000 ms/);
  });

  it('takes its SVID and bundles from the agent at SPIFFE_ENDPOINT_SOCKET and serves', async () => {
    const a: TrustDomainPki = await trustDomainPki('a.test');
    const agent = await agentServing(a, await mintX509Svid(a.root, BROKER_ID));
    const dir = await tempDir();
    const broker = startCli(['serve'], {
      SPIFFE_ENDPOINT_SOCKET: agent.address,
      TASK_BROKER_SVID_CERT: '',
      TASK_BROKER_SVID_KEY: '',
      TASK_BROKER_BUNDLES: '',
      TASK_BROKER_LISTEN: '127.0.0.1:0',
      TASK_BROKER_HTTP_LISTEN: 'off',
      TASK_BROKER_DATA_DIR: join(dir, 'data'),
      TASK_BROKER_KEK: randomBytes(32).toString('base64'),
      TASK_BROKER_MIGRATE: 'true',
    });
    cleanups.push(() => {
      broker.child.kill('SIGKILL');
    });
    const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
    expect(listening.spiffeId).toBe(BROKER_ID);
    const me = await workload(a.root, 'spiffe://a.test/w');
    const client = BrokerClient.withSvid(`127.0.0.1:${String(listening.port)}`, { ...me, bundle: a.root.pem, serverId: BROKER_ID });
    cleanups.push(() => client.close());
    expect((await client.whoAmI()).spiffeId).toBe('spiffe://a.test/w');
    broker.child.kill('SIGTERM');
    expect(await broker.exited).toBe(0);
  });
});
