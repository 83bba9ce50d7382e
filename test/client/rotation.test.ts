/**
 * The workload SDK across rotations: one TaskBrokerClient object keeps calling a real broker
 * while its SVID is rotated under it, by the Workload API (a fake SPIRE agent) or by files
 * rewritten on disk. The broker closes connections as they age (GOAWAY), so the client has to
 * make new ones; each new one must present the new SVID, and no call may fail on the way.
 */
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { connectTaskBroker, fileX509Source, type TaskBrokerClient } from '../../src/client/index.js';
import { mintX509Svid, type IssuedCertificate } from '../../src/devca/certificates.js';
import { certificateThumbprint, parsePemCertificates } from '../../src/spiffe/certificate.js';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { pemOf } from '../helpers/pki.js';
import { agentFor, API_ID, BROKER_ID, nextSvid, startBroker, svidMessage, WORKER_ID } from './fixture.js';

const cleanups = cleanupsAfterEach();

/** The token's cnf x5t#S256: the certificate it is bound to. */
function boundThumbprint(token: string): string {
  const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { cnf?: Record<string, string> };
  return claims.cnf?.['x5t#S256'] ?? '';
}

/**
 * Calls WhoAmI (three at a time) until the broker sees `next`, and returns every thumbprint seen
 * in order. Any failed call fails the test; so does a return to an older certificate.
 */
async function callUntilBrokerSees(client: TaskBrokerClient, previous: string, next: string, maxRounds = 2_000): Promise<string[]> {
  const seen: string[] = [];
  for (let round = 0; round < maxRounds; round++) {
    const answers = await Promise.all([client.whoAmI(), client.whoAmI(), client.whoAmI()]);
    for (const { certThumbprint, spiffeId } of answers) {
      expect(spiffeId).toBe(WORKER_ID);
      expect([previous, next]).toContain(certThumbprint);
      seen.push(certThumbprint);
    }
    if (answers.every((a) => a.certThumbprint === next)) return seen;
  }
  throw new Error(`the broker still saw the old certificate after ${maxRounds} rounds of calls`);
}

/** A task made before the rotation; after it, its token is bound to the new certificate. */
async function taskOf(client: TaskBrokerClient): Promise<string> {
  const { task } = await client.createTask({ action: 'invoice.export', audience: API_ID, scopes: ['invoices:read'], params: { month: '2026-01' } });
  return task.taskId;
}

describe('the workload SDK across SVID rotations', () => {
  it('keeps one client working across a Workload API rotation; new connections present the new SVID', async () => {
    const { pki, address, broker } = await startBroker(cleanups, { maxConnectionAgeMs: 300 });
    const { agent, svid: first } = await agentFor(cleanups, pki, WORKER_ID);
    const client = await connectTaskBroker({ address, serverId: BROKER_ID, workloadApi: { address: agent.address, timeoutMs: 10_000 } });
    cleanups.push(() => client.close());

    const before = await client.whoAmI();
    expect(before).toMatchObject({ spiffeId: WORKER_ID, trustDomain: 'a.test', certThumbprint: certificateThumbprint(first.der) });
    expect(before.validUntil).toBeInstanceOf(Date);
    const taskId = await taskOf(client);
    expect(boundThumbprint((await client.issueToken(taskId)).token)).toBe(certificateThumbprint(first.der));
    const accepted = broker.server.connectionsAccepted;

    const second = await mintX509Svid(pki.root, WORKER_ID);
    const rotated = nextSvid(client.source);
    agent.setX509Svid(await svidMessage(pki, second));
    await rotated;

    const seen = await callUntilBrokerSees(client, certificateThumbprint(first.der), certificateThumbprint(second.der));
    // Old certificate first, then only the new one: once rotated, no connection went back to the old SVID.
    expect(seen.slice(seen.indexOf(certificateThumbprint(second.der)))).not.toContain(certificateThumbprint(first.der));
    expect(broker.server.connectionsAccepted).toBeGreaterThan(accepted);
    // The same task, now with a token bound to the new certificate.
    expect(boundThumbprint((await client.issueToken(taskId)).token)).toBe(certificateThumbprint(second.der));
    expect((await client.completeTask(taskId, 'done')).task.state).toBe('COMPLETED');
  });

  it('reloads SVID files when they change, under the same client', async () => {
    const { pki, address } = await startBroker(cleanups, { maxConnectionAgeMs: 300 });
    const dir = await cleanups.tempDir('tb-client-files-');
    const files = { certFile: join(dir, 'svid.pem'), keyFile: join(dir, 'svid.key'), bundleFile: join(dir, 'bundle.pem') };
    /** Writes the pair the way a rotating agent does: each file renamed over the old one, key first. */
    const install = async (svid: IssuedCertificate) => {
      const pem = await pemOf(svid);
      for (const [path, text] of [
        [files.keyFile, pem.keyPem],
        [files.certFile, pem.certChainPem],
      ] as const) {
        await writeFile(`${path}.tmp`, text);
        await rename(`${path}.tmp`, path);
      }
    };
    const first = await mintX509Svid(pki.root, WORKER_ID);
    await install(first);
    await writeFile(files.bundleFile, pki.root.pem);
    const source = await fileX509Source({ ...files, pollIntervalMs: 100 });
    cleanups.push(() => source.close());
    const client = await connectTaskBroker({ address, serverId: BROKER_ID, source });
    cleanups.push(() => client.close());
    expect((await client.whoAmI()).certThumbprint).toBe(certificateThumbprint(first.der));

    const second = await mintX509Svid(pki.root, WORKER_ID);
    const changed = new Promise<void>((resolve) => {
      const off = source.onChange((identity) => {
        if (parsePemCertificates(identity.certChainPem)[0]?.thumbprint !== certificateThumbprint(second.der)) return;
        off();
        resolve();
      });
    });
    await install(second);
    await changed;
    await callUntilBrokerSees(client, certificateThumbprint(first.der), certificateThumbprint(second.der));
  });
});
