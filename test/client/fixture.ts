/**
 * What the client SDK tests share: a real broker (PostgreSQL, a.test PKI, permissive policy) whose
 * connections can be made to age out quickly, and a fake SPIRE agent handing workloads their SVIDs.
 */
import { join } from 'node:path';
import { startTaskBroker, type RunningTaskBroker } from '../../src/app/broker.js';
import { mintX509Svid, type IssuedCertificate } from '../../src/devca/certificates.js';
import { silentLogger } from '../../src/observability/logger.js';
import { StaticX509SvidSource, type X509Source } from '../../src/spiffe/x509-source.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import type { Cleanups } from '../helpers/cleanup.js';
import { createTestDatabase } from '../helpers/db.js';
import type { PolicySource } from '../../src/policy/policy-source.js';
import { permissivePolicySource } from '../helpers/policy.js';
import { brokerIdentity, bundleSet, trustDomainPki, type TrustDomainPki } from '../helpers/pki.js';
import { startFakeWorkloadApi, x509SvidMessage, type FakeWorkloadApi } from '../helpers/workload-api.js';

export const BROKER_ID = 'spiffe://a.test/task-broker';
export const WORKER_ID = 'spiffe://a.test/ns/demo/sa/worker';
export const API_ID = 'spiffe://a.test/ns/billing/sa/invoice-api';

export interface ClientFixture {
  pki: TrustDomainPki;
  broker: RunningTaskBroker;
  address: string;
}

/**
 * A broker on a fresh PostgreSQL database; `maxConnectionAgeMs` makes it close connections (GOAWAY) that often; `policy`
 * replaces the permissive one.
 */
export async function startBroker(cleanups: Cleanups, options: { maxConnectionAgeMs?: number; policy?: PolicySource } = {}): Promise<ClientFixture> {
  const pki = await trustDomainPki('a.test');
  const database = await createTestDatabase('postgres');
  cleanups.push(() => database.drop());
  const broker = await startTaskBroker({
    logger: silentLogger(),
    identity: new StaticX509SvidSource(await brokerIdentity(pki)),
    bundles: bundleSet(pki),
    store: await database.open(),
    kek: KeyEncryptionKey.fromBase64(generateKekBase64()),
    policy: options.policy ?? permissivePolicySource(),
    migrate: true,
    sweepIntervalMs: 0,
    host: '127.0.0.1',
    port: 0,
    ...(options.maxConnectionAgeMs ? { connectionLimits: { maxConnectionAgeMs: options.maxConnectionAgeMs, maxConnectionAgeGraceMs: 10_000 } } : {}),
  });
  cleanups.push(() => broker.close(1_000));
  return { pki, broker, address: `127.0.0.1:${broker.port}` };
}

/** The FetchX509SVID message for one SVID of `pki`, with the trust domain's bundle. */
export async function svidMessage(pki: TrustDomainPki, svid: IssuedCertificate) {
  return { svids: [await x509SvidMessage(svid, [pki.root])] };
}

/** A fake agent serving a fresh SVID for `spiffeId`; returns the agent and the SVID. */
export async function agentFor(cleanups: Cleanups, pki: TrustDomainPki, spiffeId: string): Promise<{ agent: FakeWorkloadApi; svid: IssuedCertificate }> {
  const agent = await startFakeWorkloadApi(join(await cleanups.tempDir('tb-client-agent-'), 'agent.sock'));
  cleanups.push(() => agent.stop());
  const svid = await mintX509Svid(pki.root, spiffeId);
  agent.setX509Svid(await svidMessage(pki, svid));
  return { agent, svid };
}

/** Resolves with the next SVID `source` announces. */
export function nextSvid(source: X509Source): Promise<string> {
  return new Promise((resolve) => {
    const off = source.onChange((identity) => {
      off();
      resolve(identity.certChainPem);
    });
  });
}
