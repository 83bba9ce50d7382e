/**
 * The real binary: dev-ca writes usable files, serve runs on them (health and reflection
 * included) and stops cleanly on SIGTERM, usage errors exit 2 with a message.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { runCli, startCli } from '../helpers/cli.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('task-broker CLI', () => {
  it('prints its commands with --help and exits 0; an unknown command exits 2', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    for (const command of ['serve', 'dev', 'dev-ca init', 'dev-ca mint']) expect(help.stdout).toContain(command);
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('every command has --help', async () => {
    for (const command of [['serve'], ['dev'], ['dev-ca', 'init'], ['dev-ca', 'mint']]) {
      const result = await runCli([...command, '--help']);
      expect(result.code, command.join(' ')).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`Usage: task-broker ${command.join(' ')}`));
    }
  });

  it('dev-ca init and mint write a CA and an EC P-256 SVID with private keys readable by the owner only', async () => {
    const ca = join(dir, 'pki');
    const init = await runCli(['dev-ca', 'init', '--dir', ca, '--trust-domain', 'example.org']);
    expect(init.code, init.stderr).toBe(0);
    const again = await runCli(['dev-ca', 'init', '--dir', ca, '--trust-domain', 'example.org']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/a CA already exists/);

    const mint = await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/ns/demo/sa/worker']);
    expect(mint.code, mint.stderr).toBe(0);
    const cert = new X509Certificate(await readFile(join(ca, 'ns-demo-sa-worker.pem')));
    expect(cert.subjectAltName).toBe('URI:spiffe://example.org/ns/demo/sa/worker');
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(cert.checkIssued(new X509Certificate(await readFile(join(ca, 'ca.pem'))))).toBe(true);
    expect((await stat(join(ca, 'ns-demo-sa-worker.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(ca, 'ca.key'))).mode & 0o777).toBe(0o600);

    const foreign = await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://other.org/x']);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toMatch(/not in this CA's trust domain example.org/);
    const bad = await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/a/../b']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/dot segments/);
  });

  it('serve refuses to start without its SVID or a bundle, exiting 2 with the reason', async () => {
    const noSvid = await runCli(['serve', '--bundle', 'example.org=/x.pem'], { env: { TASK_BROKER_SVID_CERT: '', TASK_BROKER_SVID_KEY: '' } });
    expect(noSvid.code).toBe(2);
    expect(noSvid.stderr).toMatch(/--svid-cert and --svid-key/);
    const noBundle = await runCli(['serve', '--svid-cert', 'a', '--svid-key', 'b'], { env: { TASK_BROKER_BUNDLES: '' } });
    expect(noBundle.code).toBe(2);
    expect(noBundle.stderr).toMatch(/at least one --bundle/);
    const badFlag = await runCli(['serve', '--no-such-flag']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toMatch(/Unknown option '--no-such-flag'/);
  });

  it('serve answers WhoAmI, health and reflection over mTLS, and exits 0 on SIGTERM', async () => {
    const ca = join(dir, 'serve-pki');
    expect((await runCli(['dev-ca', 'init', '--dir', ca, '--trust-domain', 'example.org'])).code).toBe(0);
    expect((await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/task-broker', '--name', 'broker'])).code).toBe(0);
    expect((await runCli(['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/w', '--name', 'w'])).code).toBe(0);

    // Configuration through environment variables, as in a Deployment.
    const broker = startCli(['serve'], {
      TASK_BROKER_LISTEN: '127.0.0.1:0',
      TASK_BROKER_SVID_CERT: join(ca, 'broker.pem'),
      TASK_BROKER_SVID_KEY: join(ca, 'broker.key'),
      TASK_BROKER_BUNDLES: `example.org=${join(ca, 'ca.pem')}`,
      TASK_BROKER_DATA_DIR: join(dir, 'data'),
    });
    try {
      const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
      expect(listening.spiffeId).toBe('spiffe://example.org/task-broker');
      const address = `127.0.0.1:${String(listening.port)}`;
      const svid = { certChainPem: await readFile(join(ca, 'w.pem'), 'utf8'), keyPem: await readFile(join(ca, 'w.key'), 'utf8'), bundle: await readFile(join(ca, 'ca.pem'), 'utf8') };
      const client = BrokerClient.withSvid(address, { ...svid, serverId: 'spiffe://example.org/task-broker' });
      expect((await client.whoAmI()).spiffeId).toBe('spiffe://example.org/w');
      client.close();

      const credentials = svidChannelCredentials({ ...svid, serverId: 'spiffe://example.org/task-broker' });
      expect(await healthOf(address, credentials, '')).toBe('SERVING');
      expect(await healthOf(address, credentials, 'taskbroker.v1.TaskBroker')).toBe('SERVING');
      expect(await reflectedServices(address, credentials)).toEqual(expect.arrayContaining(['taskbroker.v1.TaskBroker', 'grpc.health.v1.Health']));

      // A client expecting a different broker ID refuses the connection.
      const wrong = BrokerClient.withSvid(address, { ...svid, serverId: 'spiffe://example.org/not-the-broker' });
      await expect(wrong.whoAmI({ deadlineMs: 3_000 })).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      wrong.close();

      broker.child.kill('SIGTERM');
      expect(await broker.exited).toBe(0);
      expect(broker.stdout()).toMatch(/"msg":"stopped"/);
    } finally {
      broker.child.kill('SIGKILL');
    }
  });

  it('dev runs the demo end to end', async () => {
    const result = await runCli(['dev', '--dir', join(dir, 'dev')], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/broker verified: spiffe:\/\/example.org\/ns\/demo\/sa\/worker/);
    expect(result.stdout).toMatch(/broker verified: spiffe:\/\/partner.test\/ns\/jobs\/sa\/reporter against the partner.test bundle/);
    expect(result.stdout).toMatch(/refused: UNAUTHENTICATED: .*no chain to the trust bundle of "example.org"/);
    expect(result.stdout).toMatch(/Demo complete/);
  });
});

const require = createRequire(import.meta.url);

function healthOf(address: string, credentials: grpc.ChannelCredentials, service: string): Promise<string> {
  const protoPath = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
  const def = grpc.loadPackageDefinition(loadSync(protoPath, { enums: String })) as unknown as {
    grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials, o: grpc.ChannelOptions) => grpc.Client & { check: grpc.requestCallback<unknown> } } } };
  };
  const client = new def.grpc.health.v1.Health(address, credentials, svidChannelOptions()) as unknown as {
    check(req: object, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
    close(): void;
  };
  return new Promise((resolve, reject) =>
    client.check({ service }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res?.status ?? 'UNKNOWN');
    }),
  );
}

function reflectedServices(address: string, credentials: grpc.ChannelCredentials): Promise<string[]> {
  const protoPath = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');
  const def = grpc.loadPackageDefinition(loadSync(protoPath)) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: new (a: string, c: grpc.ChannelCredentials, o: grpc.ChannelOptions) => grpc.Client } } };
  };
  const client = new def.grpc.reflection.v1.ServerReflection(address, credentials, svidChannelOptions()) as unknown as {
    serverReflectionInfo(): grpc.ClientDuplexStream<object, { listServicesResponse?: { service: Array<{ name: string }> } }>;
    close(): void;
  };
  return new Promise((resolve, reject) => {
    const stream = client.serverReflectionInfo();
    stream.on('data', (res: { listServicesResponse?: { service: Array<{ name: string }> } }) => {
      resolve(res.listServicesResponse?.service.map((s) => s.name) ?? []);
      stream.end();
      client.close();
    });
    stream.on('error', reject);
    stream.write({ listServices: '*' });
  });
}
