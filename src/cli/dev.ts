/**
 * `task-broker dev`: the broker's main job on a fresh machine, end to end, in one command.
 * Mints a local trust domain (and a federated and an untrusted one), starts the broker with
 * them, and walks through what it does, printing each step.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient } from '../client/broker-client.js';
import { initDevCa, loadDevCa, mintDevSvid, type SvidFiles } from '../devca/dev-ca.js';
import { chainPem, mintX509Svid, privateKeyPem } from '../devca/certificates.js';
import { createLogger } from '../observability/logger.js';
import { parseListenAddress, stringOption, type CommandSpec, type ParsedCommand } from './options.js';
import { startFromConfig } from './serve.js';

export const devSpec: CommandSpec = {
  name: 'dev',
  summary: 'Mint a local trust domain, start the broker on the embedded database and run a demo end to end.',
  options: {
    dir: { type: 'string', placeholder: 'DIR', description: 'Where to keep the CA, SVIDs and data (default: a new temporary directory)' },
    listen: { type: 'string', placeholder: 'HOST:PORT', default: '127.0.0.1:0', description: 'Broker listen address' },
    'keep-running': { type: 'boolean', description: 'Leave the broker running after the demo (Ctrl-C stops it)' },
    'log-level': { type: 'string', placeholder: 'LEVEL', default: 'warn', description: "Broker log level (the broker's log lines go to stderr)" },
  },
};

const TRUST_DOMAIN = 'example.org';
const FEDERATED = 'partner.test';

interface Svid {
  certChainPem: string;
  keyPem: string;
}

async function readSvid(files: SvidFiles): Promise<Svid> {
  return { certChainPem: await readFile(files.certPath, 'utf8'), keyPem: await readFile(files.keyPath, 'utf8') };
}

/** Runs `fn` with a client and closes the client afterwards. */
async function using<T>(client: BrokerClient, fn: (client: BrokerClient) => Promise<T>): Promise<T> {
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function describe(err: unknown): string {
  const e = err as grpc.ServiceError;
  return `${grpc.status[e.code] ?? e.code}: ${e.details}`;
}

export async function runDev(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const dir = stringOption(parsed.values, 'dir') ?? (await mkdtemp(join(tmpdir(), 'task-broker-dev-')));
  const step = (text: string) => out(`\n==> ${text}`);

  step(`Minting local trust domains in ${dir} (task-broker dev-ca)`);
  const home = await initDevCa(join(dir, 'ca', TRUST_DOMAIN), TRUST_DOMAIN, { force: true });
  const partner = await initDevCa(join(dir, 'ca', FEDERATED), FEDERATED, { force: true });
  const brokerId = `spiffe://${TRUST_DOMAIN}/task-broker`;
  const brokerFiles = await mintDevSvid(home.dir, brokerId, { outDir: join(dir, 'svids') });
  const workloadId = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/worker`;
  const workload = await readSvid(await mintDevSvid(home.dir, workloadId, { outDir: join(dir, 'svids') }));
  const partnerId = `spiffe://${FEDERATED}/ns/jobs/sa/reporter`;
  const partnerWorkload = await readSvid(await mintDevSvid(partner.dir, partnerId, { outDir: join(dir, 'svids') }));
  out(`    ${TRUST_DOMAIN} CA: ${home.certPath}`);
  out(`    ${FEDERATED} CA (federated): ${partner.certPath}`);
  out(`    broker SVID ${brokerId}, workload SVIDs ${workloadId} and ${partnerId}`);

  step('Starting the broker (mTLS, trust bundles for both trust domains)');
  const logger = createLogger({ level: (stringOption(parsed.values, 'log-level') ?? 'warn') as 'warn', destination: process.stderr });
  const broker = await startFromConfig(
    {
      ...parseListenAddress(stringOption(parsed.values, 'listen') ?? '127.0.0.1:0'),
      svidCertPath: brokerFiles.certPath,
      svidKeyPath: brokerFiles.keyPath,
      bundles: [
        { trustDomain: TRUST_DOMAIN, path: home.certPath },
        { trustDomain: FEDERATED, path: partner.certPath },
      ],
      dataDir: join(dir, 'data'),
      filePollIntervalMs: 5_000,
      shutdownGraceMs: 5_000,
      logLevel: 'warn',
    },
    logger,
  );
  const address = `127.0.0.1:${broker.port}`;
  out(`    listening on ${address} as ${brokerId}`);
  const bundlePem = await readFile(home.certPath, 'utf8');
  const connect = (svid: Svid) => BrokerClient.withSvid(address, { ...svid, bundle: bundlePem, serverId: brokerId });

  try {
    step(`${workloadId} asks the broker who it is`);
    const me = await using(connect(workload), (client) => client.whoAmI());
    out(`    broker verified: ${me.spiffeId} (certificate x5t#S256 ${me.certThumbprint})`);

    step(`${partnerId} from the federated trust domain ${FEDERATED}`);
    const them = await using(connect(partnerWorkload), (client) => client.whoAmI());
    out(`    broker verified: ${them.spiffeId} against the ${them.trustDomain} bundle`);

    step(`An impostor: a certificate claiming ${workloadId} but signed by ${FEDERATED}'s CA`);
    // partner.test's real CA is trusted, but only for partner.test IDs.
    const { ca: partnerCa } = await loadDevCa(partner.dir);
    const impostor = await mintX509Svid(partnerCa, workloadId);
    await using(connect({ certChainPem: chainPem(impostor), keyPem: await privateKeyPem(impostor.keys) }), (client) => client.whoAmI()).then(
      () => out('    UNEXPECTED: the impostor got in'),
      (err: unknown) => out(`    refused: ${describe(err)}`),
    );
  } finally {
    if (parsed.values['keep-running'] === true) {
      out(`\nBroker left running on ${address}; SVIDs and bundles are in ${dir}. Ctrl-C to stop.`);
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()).once('SIGTERM', () => resolve()));
    }
    await broker.close(2_000);
  }
  out('\nDemo complete.');
  return 0;
}
