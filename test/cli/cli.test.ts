/**
 * The real binary: dev-ca writes usable files, serve runs on them (health and reflection
 * included) and stops cleanly on SIGTERM, usage errors exit 2 with a message.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { X509Certificate } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { CLI_TIMEOUT_MS, cliTimeout, runCli, startCli } from '../helpers/cli.js';
import { devCaServeEnv, devCaSvid } from '../helpers/dev-ca-files.js';
import { tempDirForFile } from '../helpers/cleanup.js';

const dir = tempDirForFile('tb-cli-');

describe('task-broker CLI', () => {
  it('prints its commands with --help and exits 0; an unknown command exits 2', { timeout: cliTimeout(2) }, async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    for (const command of ['serve', 'dev', 'migrate', 'dev-ca init', 'dev-ca mint']) expect(help.stdout).toContain(command);
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('-h and help print the same list as --help, exit 0', { timeout: cliTimeout(3) }, async () => {
    const [long, short, word] = await Promise.all([runCli(['--help']), runCli(['-h']), runCli(['help'])]);
    expect(long.code).toBe(0);
    for (const result of [short, word]) {
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toBe('');
      expect(result.stdout).toBe(long.stdout);
    }
  });

  it('every command has --help', { timeout: cliTimeout(5) }, async () => {
    for (const command of [['serve'], ['dev'], ['migrate'], ['dev-ca', 'init'], ['dev-ca', 'mint']]) {
      const result = await runCli([...command, '--help']);
      expect(result.code, command.join(' ')).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`Usage: task-broker ${command.join(' ')}`));
    }
  });

  it('dev-ca init and mint write a CA and an EC P-256 SVID with private keys readable by the owner only', { timeout: cliTimeout(5) }, async () => {
    const ca = join(dir(), 'pki');
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

  it('serve refuses to start without its SVID or a bundle, exiting 2 with the reason', { timeout: cliTimeout(5) }, async () => {
    const noSvid = await runCli(['serve', '--bundle', 'example.org=/x.pem'], { env: { TASK_BROKER_SVID_CERT: '', TASK_BROKER_SVID_KEY: '' } });
    expect(noSvid.code).toBe(2);
    expect(noSvid.stderr).toMatch(/--svid-cert and --svid-key/);
    const noBundle = await runCli(['serve', '--svid-cert', 'a', '--svid-key', 'b'], { env: { TASK_BROKER_BUNDLES: '' } });
    expect(noBundle.code).toBe(2);
    expect(noBundle.stderr).toMatch(/at least one --bundle/);
    const noKek = await runCli(['serve', '--svid-cert', 'a', '--svid-key', 'b', '--bundle', 'example.org=/x.pem'], {
      env: { TASK_BROKER_KEK: '', TASK_BROKER_KEK_FILE: '' },
    });
    expect(noKek.code).toBe(2);
    expect(noKek.stderr).toMatch(/exactly one key-encryption key is required/);
    const badAlg = await runCli(['serve', '--svid-cert', 'a', '--svid-key', 'b', '--bundle', 'example.org=/x.pem', '--kek', 'x', '--token-alg', 'HS256']);
    expect(badAlg.code).toBe(2);
    expect(badAlg.stderr).toMatch(/--token-alg: ES256 or EdDSA/);
    const badFlag = await runCli(['serve', '--no-such-flag']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toMatch(/Unknown option '--no-such-flag'/);
    // One line, ending where to read the usage, as every usage error does.
    expect(badFlag.stderr).toMatch(/^task-broker serve: [^\n]* \(see 'task-broker serve --help'\)\n$/);
  });

  // Steps: three dev-ca runs, two log lines, the exit after SIGTERM.
  it('serve answers WhoAmI, health and reflection over mTLS, and exits 0 on SIGTERM', { timeout: cliTimeout(6) }, async () => {
    const ca = join(dir(), 'serve-pki');
    for (const args of [
      ['dev-ca', 'init', '--dir', ca, '--trust-domain', 'example.org'],
      ['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/task-broker', '--name', 'broker'],
      ['dev-ca', 'mint', '--dir', ca, '--spiffe-id', 'spiffe://example.org/w', '--name', 'w'],
    ]) {
      const result = await runCli(args);
      expect(result.code, result.stderr).toBe(0);
    }

    const policyPath = join(dir(), 'serve-policy.yaml');
    await writeFile(policyPath, 'version: 1\nadmins: []\nrules: []\n');
    // Configuration through environment variables, as in a Deployment.
    const broker = startCli(
      ['serve'],
      devCaServeEnv(ca, 'example.org', { TASK_BROKER_POLICY: policyPath, TASK_BROKER_DATA_DIR: join(dir(), 'data'), TASK_BROKER_MIGRATE: 'true' }),
    );
    try {
      const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
      const http = await broker.waitForLog((l) => l.msg === 'HTTP listening');
      const jwks = (await (await fetch(`http://127.0.0.1:${String(http.port)}/.well-known/jwks.json`)).json()) as { keys: Array<{ alg: string; kid: string }> };
      expect(jwks.keys).toHaveLength(1);
      expect(jwks.keys[0]?.alg).toBe('ES256');
      expect(listening.spiffeId).toBe('spiffe://example.org/task-broker');
      const address = `127.0.0.1:${String(listening.port)}`;
      const svid = await devCaSvid(ca, 'w', 'spiffe://example.org/task-broker');
      const client = BrokerClient.withSvid(address, svid);
      expect((await client.whoAmI()).spiffeId).toBe('spiffe://example.org/w');
      client.close();

      const credentials = svidChannelCredentials(svid);
      expect(await healthOf(address, credentials, '')).toBe('SERVING');
      expect(await healthOf(address, credentials, 'taskbroker.v1.TaskBroker')).toBe('SERVING');
      expect(await reflectedServices(address, credentials)).toEqual(expect.arrayContaining(['taskbroker.v1.TaskBroker', 'grpc.health.v1.Health']));

      // A client expecting a different broker ID refuses the connection. The refusal ends the call
      // (UNAVAILABLE) as soon as the handshake fails; the deadline only catches a hang.
      const wrong = BrokerClient.withSvid(address, { ...svid, serverId: 'spiffe://example.org/not-the-broker' });
      await expect(wrong.whoAmI({ deadlineMs: 60_000 })).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      wrong.close();

      broker.child.kill('SIGTERM');
      expect(await broker.exited, broker.stderr()).toBe(0);
      expect(broker.stdout()).toMatch(/"msg":"stopped"/);
    } finally {
      broker.child.kill('SIGKILL');
    }
  });

  it('migrate applies the migrations to an embedded database once, and --status lists them', { timeout: cliTimeout(4) }, async () => {
    const dataDir = join(dir(), 'migrate-data');
    const first = await runCli(['migrate', '--data-dir', dataDir]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/applied {2}0001_tasks_tokens_keys_audit/);
    const second = await runCli(['migrate', '--data-dir', dataDir]);
    expect(second.stdout).toMatch(/up to date/);
    const status = await runCli(['migrate', '--data-dir', dataDir, '--status']);
    expect(status.stdout).toMatch(/applied {2}0001_tasks_tokens_keys_audit/);
    const unreachable = await runCli(['migrate', '--database-url', 'postgres://nobody:secret@127.0.0.1:1/none']);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/cannot reach PostgreSQL at postgres:\/\/nobody:\*\*\*@127.0.0.1:1\/none/);
    expect(unreachable.stderr).not.toContain('secret');
  });

  // One process doing the work of several: a broker, its database, a dozen calls.
  it('dev runs the main job end to end', { timeout: cliTimeout(2) }, async () => {
    const result = await runCli(['dev', '--dir', join(dir(), 'dev')], { timeoutMs: 2 * CLI_TIMEOUT_MS });
    expect(result.code, result.stderr).toBe(0);
    const out = result.stdout;
    expect(out).toMatch(/verified: spiffe:\/\/example.org\/ns\/demo\/sa\/worker/);
    expect(out).toMatch(/federated: spiffe:\/\/partner.test\/ns\/jobs\/sa\/reporter verified against the partner.test bundle/);
    expect(out).toMatch(/refused: UNAUTHENTICATED: .*no chain to the trust bundle of "example.org"/);
    expect(out).toMatch(/task tsk_\S+ TASK_STATE_ACTIVE/);
    expect(out).toMatch(/"typ":"task\+jwt"/);
    expect(out).toMatch(/VERIFY_TOKEN_REASON_VALID: valid and bound to the presenter/);
    expect(out).toMatch(/stranger: VERIFY_TOKEN_REASON_BINDING_MISMATCH/);
    expect(out).toMatch(/NOT_FOUND: task not found/);
    expect(out).toMatch(/principal: \{"issuer":"https:\/\/idp.example.org","subject":"alice","sessionId":"session-7f3a"\}/);
    expect(out).toMatch(/child task tsk_\S+ owned by spiffe:\/\/example.org\/ns\/tools\/sa\/pdf-renderer, depth 1/);
    expect(out).toMatch(/"act":\{"sub":"spiffe:\/\/example.org\/ns\/demo\/sa\/worker"\}/);
    expect(out).toMatch(/verifies the tool's token: VERIFY_TOKEN_REASON_VALID/);
    expect(out).toMatch(/PERMISSION_DENIED: widening refused: scopes not granted to the parent task: invoices:list/);
    expect(out).toMatch(/TASK_STATE_COMPLETED; tokens revoked with it: 2/);
    expect(out).toMatch(/VERIFY_TOKEN_REASON_REVOKED: the token was revoked \(task completed\)/);
    expect(out).toMatch(/the tool's token: VERIFY_TOKEN_REASON_REVOKED/);
    expect(out).toMatch(/#1 \S+ task\.created/);
    expect(out).toMatch(/task\.delegated/);
    expect(out).toMatch(/access\.denied +spiffe:\/\/example.org\/ns\/demo\/sa\/stranger/);
    expect(out).toMatch(/hash chain verified: 8 events/);
    expect(out).toMatch(/hash chain verified: 6 events/);
    expect(out).toMatch(/Demo complete/);
  });
});

const require = createRequire(import.meta.url);

function healthOf(address: string, credentials: grpc.ChannelCredentials, service: string): Promise<string> {
  const protoPath = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
  const def = grpc.loadPackageDefinition(loadSync(protoPath, { enums: String })) as unknown as {
    grpc: {
      health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials, o: grpc.ChannelOptions) => grpc.Client & { check: grpc.requestCallback<unknown> } } };
    };
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
