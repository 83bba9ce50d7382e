/**
 * The workload SDK's errors for calls that never reach the broker, through real connections:
 * a closed port, a name that does not resolve, a listener that never answers, the broker's real
 * mTLS listener (SvidServer) with the wrong bundle or under another SPIFFE ID, a broker that
 * refuses our SVID, a plain-HTTP port. The status code and `details` stay what grpc-js said;
 * `hint` and the message say which address, what is wrong and what to do, in one line.
 */
import * as grpc from '@grpc/grpc-js';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  connectTaskBroker,
  DeadlineExceededError,
  svidChannelCredentials,
  TaskBrokerError,
  UnauthenticatedError,
  UnavailableError,
  type TaskBrokerClient,
} from '../../src/client/index.js';
import { mintX509Svid, privateKeyPem } from '../../src/devca/certificates.js';
import { silentLogger } from '../../src/observability/logger.js';
import { cleanupsAfterEach, tempDirForFile } from '../helpers/cleanup.js';
import { brokerIdentity, bundleSet, pemOf, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { startTestSvidServer } from '../helpers/svid-server.js';

const BROKER_ID = 'spiffe://a.test/task-broker';
const WORKER_ID = 'spiffe://a.test/ns/demo/sa/worker';

const cleanups = cleanupsAfterEach();
const dir = tempDirForFile('tb-sdk-errors-');

let a: TrustDomainPki;
let b: TrustDomainPki;
/** Files: the a.test worker's SVID and key, another a.test key, and the roots of a.test and b.test. */
const files = { cert: '', key: '', otherKey: '', aRoot: '', bRoot: '' };

beforeAll(async () => {
  [a, b] = await Promise.all([trustDomainPki('a.test'), trustDomainPki('b.test')]);
  const worker = await pemOf(await mintX509Svid(a.root, WORKER_ID));
  const other = await mintX509Svid(a.root, WORKER_ID);
  Object.assign(files, {
    cert: join(dir(), 'worker.pem'),
    key: join(dir(), 'worker.key'),
    otherKey: join(dir(), 'other.key'),
    aRoot: join(dir(), 'a-bundle.pem'),
    bRoot: join(dir(), 'b-bundle.pem'),
  });
  await Promise.all([
    writeFile(files.cert, worker.certChainPem),
    writeFile(files.key, worker.keyPem),
    writeFile(files.otherKey, await privateKeyPem(other.keys)),
    writeFile(files.aRoot, a.root.pem),
    writeFile(files.bRoot, b.root.pem),
  ]);
});

/** The SDK client for `address` on the worker's SVID files, trusting `bundleFiles`. */
async function sdkClient(address: string, options: { serverId?: string; bundleFiles?: Record<string, string>; certFile?: string; keyFile?: string } = {}) {
  const client = await connectTaskBroker({
    address,
    serverId: options.serverId ?? BROKER_ID,
    files: { certFile: options.certFile ?? files.cert, keyFile: options.keyFile ?? files.key, bundleFiles: options.bundleFiles ?? { 'a.test': files.aRoot } },
  });
  cleanups.push(() => client.close());
  return client;
}

/** The error of a WhoAmI that must fail. */
async function failure(client: TaskBrokerClient, deadlineMs = 10_000): Promise<TaskBrokerError> {
  const err = await client.whoAmI({ deadlineMs }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TaskBrokerError);
  return err as TaskBrokerError;
}

async function listening<S extends Server>(server: S): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}

/** The broker's real mTLS listener (a.test SVID, trusting a.test), answering WhoAmI. */
async function brokerListener(): Promise<string> {
  const server = await startTestSvidServer({ identity: await brokerIdentity(a), bundles: bundleSet(a), logger: silentLogger() });
  cleanups.push(() => server.close());
  return `127.0.0.1:${server.port}`;
}

describe('calls that never reach the broker', () => {
  it('broker down: UnavailableError naming the address, "connection refused" and what to check', async () => {
    const err = await failure(await sdkClient('127.0.0.1:1'));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(err.reason).toBe('unavailable');
    expect(err.retryable).toBe(true);
    const hint = 'cannot reach the broker at 127.0.0.1:1: connection refused (is task-broker serve running and listening there? check the address)';
    expect(err.hint).toBe(hint);
    expect(err.message).toBe(`UNAVAILABLE: ${hint}`);
    // What grpc-js said is kept as it was.
    expect(err.details).toMatch(/ECONNREFUSED 127\.0\.0\.1:1/);
  });

  it('a host name that does not resolve', async () => {
    const err = await failure(await sdkClient('no-such-host.invalid:8443'));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.hint).toMatch(
      /^cannot reach the broker at no-such-host\.invalid:8443: the host name no-such-host\.invalid does not resolve .*: check the address$/,
    );
  });

  it('a listener that never completes the handshake: DeadlineExceededError saying no connection was made in time', async () => {
    const sockets: Socket[] = [];
    const port = await listening(createTcpServer((socket) => sockets.push(socket)));
    cleanups.push(() => sockets.forEach((s) => s.destroy()));
    const err = await failure(await sdkClient(`127.0.0.1:${port}`), 300);
    expect(err).toBeInstanceOf(DeadlineExceededError);
    expect(err.hint).toMatch(
      new RegExp(
        `^no connection to the broker at 127\\.0\\.0\\.1:${port} within the deadline \\([\\d.]+s\\): nothing completed a TLS handshake there .*raise deadlineMs on a slow network\\)$`,
      ),
    );
  });

  it('a plain HTTP port: not the broker’s mTLS listener', async () => {
    const port = await listening(createHttpServer((_req, res) => res.end('ok')));
    const err = await failure(await sdkClient(`127.0.0.1:${port}`));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.hint).toMatch(new RegExp(`^127\\.0\\.0\\.1:${port} does not answer with TLS \\(.+\\): it is not the broker's gRPC \\(mTLS\\) listener`));
  });
});

describe('calls the TLS handshake stops', () => {
  it('a bundle without the broker’s CA: the certificate does not chain to it; give the right bundle', async () => {
    const address = await brokerListener();
    // The a.test bundle file holds b.test's root: the wrong file.
    const err = await failure(await sdkClient(address, { bundleFiles: { 'a.test': files.bRoot } }));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.hint).toBe(
      `the broker at ${address} presented a certificate that does not chain to the client's trust bundle for the broker's trust domain (unable to verify the first certificate): give the client the trust bundle of the broker's trust domain`,
    );
    // The same broker with the right bundle answers: the bundle was the only thing wrong.
    expect((await (await sdkClient(address)).whoAmI()).spiffeId).toBe(WORKER_ID);
  });

  it('another broker than serverId: both IDs, and what to check', async () => {
    const address = await brokerListener();
    const err = await failure(await sdkClient(address, { serverId: 'spiffe://a.test/not-the-broker' }));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.hint).toBe(
      `the broker at ${address} presented spiffe://a.test/task-broker, expected spiffe://a.test/not-the-broker: check serverId (or check the address, if this is not the broker you meant)`,
    );
    expect(err.details).toMatch(/broker presented spiffe:\/\/a\.test\/task-broker, expected spiffe:\/\/a\.test\/not-the-broker/);
  });

  it('an SVID the broker does not trust: UnauthenticatedError with the broker’s reason and what to present', async () => {
    const address = await brokerListener();
    const stranger = await pemOf(await mintX509Svid(b.root, 'spiffe://b.test/ns/demo/sa/worker'));
    await writeFile(join(dir(), 'stranger.pem'), stranger.certChainPem);
    await writeFile(join(dir(), 'stranger.key'), stranger.keyPem);
    const client = await sdkClient(address, {
      certFile: join(dir(), 'stranger.pem'),
      keyFile: join(dir(), 'stranger.key'),
      bundleFiles: { 'a.test': files.aRoot, 'b.test': files.bRoot },
    });
    const err = await failure(client);
    expect(err).toBeInstanceOf(UnauthenticatedError);
    expect(err.hint).toBe(
      `the broker at ${address} did not accept our SVID (x509svid: no trust bundle for trust domain "b.test"): present an SVID from a trust domain the broker trusts (one it has a bundle for)`,
    );
  });

  it('an answer from the broker itself is left as the broker gave it', async () => {
    const address = await brokerListener();
    const client = await sdkClient(address);
    // TaskBroker.GetTask is not served by this listener: UNIMPLEMENTED comes from the server.
    const err = (await client.getTask('tsk_AAAAAAAAAAAAAAAAAAAAAAAA').then(
      () => undefined,
      (e: unknown) => e,
    )) as TaskBrokerError;
    expect(err).toBeInstanceOf(TaskBrokerError);
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(err.hint).toBeUndefined();
    expect(err.message).toBe(`UNIMPLEMENTED: ${err.details}`);
  });
});

describe('SVID files whose key is not the certificate’s', () => {
  it('connectTaskBroker names both files and what to give', async () => {
    await expect(sdkClient('127.0.0.1:1', { keyFile: files.otherKey })).rejects.toThrow(
      `SVID key ${files.otherKey} does not match the certificate in ${files.cert} (its public key differs): give the private key that was issued with this certificate`,
    );
  });

  it('svidChannelCredentials: with the file names (and flags) given, and without', async () => {
    const worker = await pemOf(await mintX509Svid(a.root, WORKER_ID));
    const other = await pemOf(await mintX509Svid(a.root, WORKER_ID));
    const pem = { certChainPem: worker.certChainPem, keyPem: other.keyPem, bundle: a.root.pem, serverId: BROKER_ID };
    expect(() => svidChannelCredentials({ ...pem, files: { cert: '/etc/tb/svid.pem', key: '/etc/tb/svid.key', keyOption: '--svid-key' } })).toThrow(
      'SVID key /etc/tb/svid.key does not match the certificate in /etc/tb/svid.pem (its public key differs): give --svid-key the private key that was issued with this certificate',
    );
    expect(() => svidChannelCredentials(pem)).toThrow(
      'the SVID key does not match the SVID certificate (its public key differs): give the private key that was issued with this certificate',
    );
    // Files swapped: the certificate file holds the key.
    expect(() =>
      svidChannelCredentials({
        ...pem,
        certChainPem: worker.keyPem,
        keyPem: worker.certChainPem,
        files: { cert: '/x/svid.key', key: '/x/svid.pem', certOption: '--svid-cert' },
      }),
    ).toThrow(
      /^SVID certificate \/x\/svid\.key is not a PEM certificate chain \(.*\) \(it holds a private key: are the certificate and key files swapped\?\): give --svid-cert/,
    );
    // The matching key is accepted.
    expect(svidChannelCredentials({ ...pem, keyPem: worker.keyPem })).toBeDefined();
  });
});
