/**
 * Rotation without restarts: trust bundle files and the broker's own SVID files are replaced on
 * disk while the server runs; new connections see the change, open connections are kept.
 */
import * as grpc from '@grpc/grpc-js';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRootCa, mintX509Svid, privateKeyPem } from '../../src/devca/certificates.js';
import { certificateThumbprint } from '../../src/spiffe/certificate.js';
import { TrustBundleSet, type X509BundleSource } from '../../src/spiffe/bundle.js';
import { watchBundleFiles } from '../../src/spiffe/bundle-files.js';
import { FileX509SvidSource } from '../../src/spiffe/file-x509-source.js';
import { SvidServer } from '../../src/transport/svid-server.js';
import { brokerProto } from '../../src/protocol/proto.js';
import { whoAmIHandler } from '../../src/api/task-broker-service.js';
import type { Logger } from '../../src/observability/logger.js';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { capturedLogger } from '../helpers/logs.js';
import { brokerIdentity, bundleSet, pemOf, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { clientFor, rawCredentials, startTestSvidServer, type TestSvidServer } from '../helpers/svid-server.js';

const cleanups = cleanupsAfterEach();
const tempDir = () => cleanups.tempDir('tb-rotation-');

/** Replaces a file the way deploy tools do: write aside, rename over. */
async function replaceFile(path: string, content: string): Promise<void> {
  await writeFile(`${path}.tmp`, content);
  await rename(`${path}.tmp`, path);
}

async function eventually<T>(fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A bundle file for a.test holding `pem`, followed into a new bundle set until the test ends. */
async function watchedBundleFile(pem: string, logger: Logger, pollIntervalMs: number): Promise<{ path: string; bundles: TrustBundleSet }> {
  const path = join(await tempDir(), 'a.pem');
  await writeFile(path, pem);
  const bundles = new TrustBundleSet();
  const watch = await watchBundleFiles(bundles, [{ trustDomain: 'a.test', path }], { logger, pollIntervalMs });
  cleanups.push(() => watch.close());
  return { path, bundles };
}

/** A WhoAmI server with the broker's SVID from `pki`, trusting what `bundles` holds, closed when the test ends. */
async function serverTrusting(pki: TrustDomainPki, bundles: X509BundleSource, logger: Logger, clock?: () => Date): Promise<TestSvidServer> {
  const server = await startTestSvidServer({ identity: await brokerIdentity(pki), bundles, logger, clock });
  cleanups.push(() => server.close());
  return server;
}

/** The error a call failed with; throws if it succeeded. */
async function refusalOf(call: Promise<unknown>): Promise<grpc.ServiceError> {
  const outcome = await call.then(
    () => undefined,
    (err: unknown) => err as grpc.ServiceError,
  );
  if (!outcome) throw new Error('call succeeded');
  return outcome;
}

describe('trust bundle files reload without a restart', () => {
  it('a bundle file replaced on disk takes effect for new connections, and open connections are kept', async () => {
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const newCa = await createRootCa('a.test');
    const { path: bundlePath, bundles } = await watchedBundleFile(a.root.pem, logger, 200);
    const server = await serverTrusting(a, bundles, logger);

    const oldClient = clientFor(server.port, rawCredentials(a.root.pem, await pemOf(await mintX509Svid(a.root, 'spiffe://a.test/old'))));
    cleanups.push(() => oldClient.close());
    expect((await oldClient.whoAmI()).spiffeId).toBe('spiffe://a.test/old');
    const accepted = server.server.connectionsAccepted;

    const newSvid = await pemOf(await mintX509Svid(newCa, 'spiffe://a.test/new'));
    const refused = clientFor(server.port, rawCredentials(a.root.pem, newSvid));
    await expect(refused.whoAmI()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    refused.close();

    // CA rotation: the new bundle holds the old and the new root.
    await replaceFile(bundlePath, a.root.pem + newCa.pem);
    const me = await eventually(async () => {
      const client = clientFor(server.port, rawCredentials(a.root.pem, newSvid));
      try {
        return await client.whoAmI();
      } finally {
        client.close();
      }
    });
    expect(me.spiffeId).toBe('spiffe://a.test/new');
    expect(lines().some((l) => l.msg === 'trust bundle reloaded')).toBe(true);

    // The open connection still works, on the same connection.
    const before = server.server.connectionsAccepted;
    expect((await oldClient.whoAmI()).spiffeId).toBe('spiffe://a.test/old');
    expect(server.server.connectionsAccepted).toBe(before);
    expect(before).toBeGreaterThan(accepted);
  });

  it('when a CA leaves the bundle, calls on open connections it vouched for are refused', async () => {
    const { logger } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const { path: bundlePath, bundles } = await watchedBundleFile(a.root.pem, logger, 200);
    const server = await serverTrusting(a, bundles, logger);

    const client = clientFor(server.port, rawCredentials(a.root.pem, await pemOf(await mintX509Svid(a.root, 'spiffe://a.test/w'))));
    cleanups.push(() => client.close());
    await client.whoAmI();

    await replaceFile(bundlePath, (await createRootCa('a.test')).pem);
    const refusal = await eventually(() => refusalOf(client.whoAmI()));
    expect(refusal.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(refusal.details).toMatch(/no chain to the trust bundle/);
    const calls = server.handlerCalls();
    await expect(client.whoAmI()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(server.handlerCalls()).toBe(calls);
  });

  it('a broken new bundle file keeps the last good bundle and logs why', async () => {
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const { path: bundlePath, bundles } = await watchedBundleFile(a.root.pem, logger, 100);
    const good = bundles.getX509Bundle('a.test');

    await replaceFile(bundlePath, '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
    const failure = await eventually(() => {
      const line = lines().find((l) => l.msg === 'trust bundle reload failed; keeping the last good bundle');
      if (!line) throw new Error('no failure logged yet');
      return Promise.resolve(line);
    });
    expect(failure.trustDomain).toBe('a.test');
    expect(String(failure.err)).toMatch(/bundle for a.test/);
    expect(bundles.getX509Bundle('a.test')).toBe(good);
  });

  it('a bundle file that cannot be read at startup stops the start with the reason', async () => {
    const { logger } = capturedLogger();
    await expect(watchBundleFiles(new TrustBundleSet(), [{ trustDomain: 'a.test', path: '/nonexistent/a.pem' }], { logger })).rejects.toThrow(
      /cannot load trust bundle for a.test from \/nonexistent\/a.pem: .*ENOENT/,
    );
  });
});

describe("the broker's own SVID reloads from files", () => {
  it('new connections get the new certificate; open connections keep working', async () => {
    const dir = await tempDir();
    const { logger, lines } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const certPath = join(dir, 'svid.pem');
    const keyPath = join(dir, 'svid.key');
    const first = await mintX509Svid(a.root, 'spiffe://a.test/task-broker');
    await writeFile(certPath, first.pem);
    await writeFile(keyPath, await privateKeyPem(first.keys));

    const identity = await FileX509SvidSource.load(certPath, keyPath, { logger, pollIntervalMs: 200 });
    cleanups.push(() => identity.close());
    const server = new SvidServer({ bundles: bundleSet(a), identity, logger });
    server.grpc.addService(brokerProto().taskbroker.v1.TaskBroker.service, { WhoAmI: whoAmIHandler({ logger }) });
    const port = await server.listen('127.0.0.1', 0);
    cleanups.push(() => server.shutdown(1_000));

    const workload = await pemOf(await mintX509Svid(a.root, 'spiffe://a.test/w'));
    const seen: string[] = [];
    const credentials = () =>
      grpc.credentials.createSsl(Buffer.from(a.root.pem), Buffer.from(workload.keyPem), Buffer.from(workload.certChainPem), {
        checkServerIdentity: (_h, cert) => {
          seen.push(certificateThumbprint(cert.raw));
          return undefined;
        },
      });
    const open = clientFor(port, credentials());
    cleanups.push(() => open.close());
    await open.whoAmI();
    expect(seen).toEqual([certificateThumbprint(first.der)]);

    const second = await mintX509Svid(a.root, 'spiffe://a.test/task-broker');
    // Key first, then certificate: the half-written state in between must not be served.
    await writeFile(keyPath, await privateKeyPem(second.keys));
    await writeFile(certPath, second.pem);
    await eventually(async () => {
      const fresh = clientFor(port, credentials());
      try {
        await fresh.whoAmI();
      } finally {
        fresh.close();
      }
      if (seen[seen.length - 1] !== certificateThumbprint(second.der)) throw new Error('still the old SVID');
    });
    expect(lines().some((l) => l.msg === 'server SVID reloaded')).toBe(true);
    await open.whoAmI();
    expect(seen.filter((t) => t === certificateThumbprint(first.der)).length).toBeGreaterThanOrEqual(1);
  });

  it('a key that does not match the certificate is refused at startup', async () => {
    const dir = await tempDir();
    const { logger } = capturedLogger();
    const a = await trustDomainPki('a.test');
    const one = await mintX509Svid(a.root, 'spiffe://a.test/task-broker');
    const other = await mintX509Svid(a.root, 'spiffe://a.test/task-broker');
    await writeFile(join(dir, 'c.pem'), one.pem);
    await writeFile(join(dir, 'k.pem'), await privateKeyPem(other.keys));
    await expect(FileX509SvidSource.load(join(dir, 'c.pem'), join(dir, 'k.pem'), { logger })).rejects.toThrow(
      `SVID key ${join(dir, 'k.pem')} does not match the certificate in ${join(dir, 'c.pem')} (its public key differs): give the private key that was issued with this certificate`,
    );
  });
});

describe('identity is re-checked on every call', () => {
  it('a call after the leaf expired on an open connection is refused', async () => {
    const { logger } = capturedLogger();
    const a = await trustDomainPki('a.test');
    let now = Date.now();
    const server = await serverTrusting(a, bundleSet(a), logger, () => new Date(now));
    const leaf = await mintX509Svid(a.root, 'spiffe://a.test/short-lived', { ttlMs: 60_000 });
    const client = clientFor(server.port, rawCredentials(a.root.pem, await pemOf(leaf)));
    cleanups.push(() => client.close());
    await client.whoAmI();
    now += 120_000;
    const refusal = await refusalOf(client.whoAmI());
    expect(refusal.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(refusal.details).toMatch(/leaf certificate has expired/);
  });
});
