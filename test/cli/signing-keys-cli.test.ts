/**
 * `task-broker admin list-signing-keys` and `rotate-signing-key` end to end: the real binary (dist/)
 * against a real `serve` (embedded PGlite, dev-ca files, a policy, --key-pre-publication from the
 * environment), in text and --json, with the exit codes scripts rely on (5 while a key is pending,
 * 3 for a non-admin); and `serve` refusing a pre-publication period below the JWKS cache lifetime.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { cliTimeout, runCli, startCli, type CliResult, type RunningCli } from '../helpers/cli.js';
import { devCaServeEnv, devCaSvid } from '../helpers/dev-ca-files.js';

const TD = 'example.org';
const BROKER_ID = `spiffe://${TD}/task-broker`;
const ADMIN_ID = `spiffe://${TD}/ns/platform/sa/admin`;
const WORKER_ID = `spiffe://${TD}/ns/demo/sa/worker`;
const API_ID = `spiffe://${TD}/ns/demo/sa/api`;

const POLICY = `
version: 1
admins: [${ADMIN_ID}]
rules:
  - name: demo
    callers: { spiffe_ids: [${WORKER_ID}] }
    actions: ["report.read"]
    audiences: [${API_ID}]
    scopes: ["reports:read"]
`;

/** The serve option under test: two minutes, above the 90 s minimum. */
const PRE_PUBLICATION = '120s';

interface JsonKey {
  kid: string;
  alg: string;
  state: string;
  createdAt: string;
  activatesAt: string;
  retiredAt: string | null;
  publishedUntil: string | null;
  published: boolean;
}
interface JsonKeys {
  keys: JsonKey[];
  prePublicationSeconds: number;
  retiredPublicationSeconds: number;
}
interface JsonRotation {
  kid: string;
  retiredKid: string;
  state: string;
  activatesAt: string;
  retiredKeyPublishedUntil: string | null;
  immediate: boolean;
  discardedKid: string;
}

let dir: string;
let pki: string;
let broker: RunningCli;
let address: string;
let httpPort: number;
let worker: BrokerClient;

function adminEnv(name = 'admin'): NodeJS.ProcessEnv {
  return {
    TASK_BROKER_ADDRESS: address,
    TASK_BROKER_ID: BROKER_ID,
    TASK_BROKER_ADMIN_SVID_CERT: join(pki, `${name}.pem`),
    TASK_BROKER_ADMIN_SVID_KEY: join(pki, `${name}.key`),
    TASK_BROKER_ADMIN_BUNDLE: join(pki, 'ca.pem'),
    TASK_BROKER_ADMIN_TIMEOUT: '60s',
  };
}

function admin(args: string[], as = 'admin'): Promise<CliResult> {
  return runCli(['admin', ...args], { env: adminEnv(as) });
}

function jsonOf<T>(result: CliResult): T {
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as T;
}

/** `text` as a literal inside a RegExp. */
const escaped = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

async function jwksKids(): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${httpPort}/.well-known/jwks.json`);
  return ((await res.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
}

async function signingKid(): Promise<string> {
  const { task } = await worker.createTask({
    spec: { action: 'report.read', resources: ['reports/2026'], audience: API_ID, scopes: ['reports:read'], ttl: { seconds: 600 } },
  });
  const { token } = await worker.issueToken({ taskId: task!.taskId });
  return decodeProtectedHeader(token).kid ?? '';
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-keys-cli-'));
  pki = join(dir, 'pki');
  const init = await runCli(['dev-ca', 'init', '--dir', pki, '--trust-domain', TD]);
  expect(init.code, init.stderr).toBe(0);
  const mints = await Promise.all(
    Object.entries({ broker: BROKER_ID, admin: ADMIN_ID, worker: WORKER_ID }).map(([name, id]) =>
      runCli(['dev-ca', 'mint', '--dir', pki, '--spiffe-id', id, '--name', name]),
    ),
  );
  for (const r of mints) expect(r.code, r.stderr).toBe(0);
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  broker = startCli(
    ['serve'],
    devCaServeEnv(pki, TD, {
      TASK_BROKER_DATA_DIR: join(dir, 'data'),
      TASK_BROKER_MIGRATE: 'true',
      TASK_BROKER_POLICY: join(dir, 'policy.yaml'),
      TASK_BROKER_KEY_PRE_PUBLICATION: PRE_PUBLICATION,
    }),
  );
  const listening = await broker.waitForLog((l) => l.msg === 'task-broker listening');
  const http = await broker.waitForLog((l) => l.msg === 'HTTP listening');
  address = `127.0.0.1:${String(listening.port)}`;
  httpPort = Number(http.port);
  worker = BrokerClient.withSvid(address, await devCaSvid(pki, 'worker', BROKER_ID));
}, cliTimeout(4));

afterAll(async () => {
  worker?.close();
  if (broker) {
    broker.child.kill('SIGTERM');
    expect(await broker.exited, broker.stderr()).toBe(0);
  }
  await rm(dir, { recursive: true, force: true });
}, cliTimeout(1));

describe('task-broker admin list-signing-keys and rotate-signing-key', () => {
  it('--help names the flags, the phases and the exit codes', async () => {
    const [list, rotate] = await Promise.all([runCli(['admin', 'list-signing-keys', '--help']), runCli(['admin', 'rotate-signing-key', '--help'])]);
    expect(list.code).toBe(0);
    expect(list.stdout).toContain('Usage: task-broker admin list-signing-keys [options]');
    for (const text of ['--all', '--json', '--broker-id SPIFFE_ID', 'NEXT, ACTIVE, RETIRED', 'Exit status']) expect(list.stdout).toContain(text);
    expect(rotate.code).toBe(0);
    for (const text of ['--immediate', '--reason TEXT', 'pre-publication', 'FAILED_PRECONDITION']) expect(rotate.stdout).toContain(text);
  });

  it(
    'lists the keys as a table or JSON; a rotation adds a NEXT key, and another one is refused (exit 5) while it is pending',
    { timeout: cliTimeout(6) },
    async () => {
      const first = jsonOf<JsonKeys>(await admin(['list-signing-keys', '--json']));
      expect(first).toMatchObject({ prePublicationSeconds: 120, retiredPublicationSeconds: 15 * 60 + 30 });
      expect(first.keys).toEqual([
        expect.objectContaining({ alg: 'ES256', state: 'SIGNING_KEY_STATE_ACTIVE', retiredAt: null, publishedUntil: null, published: true }),
      ]);
      const active = first.keys[0]!.kid;

      const rotation = await admin(['rotate-signing-key', '--reason', 'quarterly']);
      expect(rotation.code, rotation.stderr).toBe(0);
      const next = /^new signing key: +(\S+)$/m.exec(rotation.stdout)?.[1] ?? '';
      const activatesAt = /^activates at: +(\S+)$/m.exec(rotation.stdout)?.[1] ?? '';
      expect(rotation.stdout).toMatch(/^state: +NEXT \(in the JWKS now; signs from its activation time\)$/m);
      expect(rotation.stdout).toMatch(
        new RegExp(`^retired key: +${active} \\(signs until ${escaped(activatesAt)}, then stays in the JWKS until \\S+ at the earliest\\)$`, 'm'),
      );
      expect(Date.parse(activatesAt) - Date.now()).toBeGreaterThan(60_000);
      expect(await jwksKids()).toEqual([active, next]);
      expect(await signingKid()).toBe(active);

      const table = await admin(['list-signing-keys']);
      expect(table.code, table.stderr).toBe(0);
      const lines = table.stdout.split('\n');
      expect(lines[0]).toMatch(/^KID +ALG +STATE +CREATED +ACTIVE FROM +RETIRED +IN JWKS UNTIL$/);
      expect(lines[1]).toMatch(new RegExp(`^${next} +ES256 +NEXT +\\S+ +${escaped(activatesAt)} +- +retirement \\+ 15m30s$`));
      expect(lines[2]).toMatch(new RegExp(`^${active} +ES256 +ACTIVE +\\S+ +\\S+ +- +retirement \\+ 15m30s$`));
      expect(table.stdout).toContain('pre-publication 2m: a new key is in the JWKS this long before it signs (NEXT); a retired key stays in the JWKS 15m30s');

      const again = await admin(['rotate-signing-key']);
      expect(again.code).toBe(5);
      expect(again.stdout).toBe('');
      expect(again.stderr).toMatch(
        new RegExp(
          `^task-broker admin rotate-signing-key: FAILED_PRECONDITION: signing key ${next} is already waiting to become active, at ${escaped(activatesAt)} ` +
            '\\(in (\\d+m)?(\\d+s)?\\): rotate again after that, or rotate with immediate \\(emergency: no pre-publication\\) if the active key is compromised\n$',
        ),
      );

      // The emergency path: the new key signs at once, the pending one is dropped.
      const emergency = jsonOf<JsonRotation>(await admin(['rotate-signing-key', '--immediate', '--reason', 'INC-7: key leaked', '--json']));
      expect(emergency).toMatchObject({ state: 'SIGNING_KEY_STATE_ACTIVE', immediate: true, retiredKid: active, discardedKid: next });
      expect(await signingKid()).toBe(emergency.kid);
      expect(await jwksKids()).toEqual([emergency.kid, active]);
      const listed = jsonOf<JsonKeys>(await admin(['list-signing-keys', '--all', '--json']));
      expect(listed.keys.map((k) => [k.kid, k.state, k.published])).toEqual([
        [emergency.kid, 'SIGNING_KEY_STATE_ACTIVE', true],
        [next, 'SIGNING_KEY_STATE_RETIRED', false],
        [active, 'SIGNING_KEY_STATE_RETIRED', true],
      ]);
      expect(listed.keys[2]).toMatchObject({ retiredAt: emergency.activatesAt, publishedUntil: emergency.retiredKeyPublishedUntil });
      const text = await admin(['list-signing-keys']);
      const iso = (text: string | null) => escaped(new Date(text ?? '').toISOString());
      expect(text.stdout.split('\n')[2]).toMatch(
        new RegExp(`^${active} +ES256 +RETIRED +\\S+ +\\S+ +${iso(emergency.activatesAt)} +${iso(emergency.retiredKeyPublishedUntil)}$`),
      );
    },
  );

  it('a non-admin is refused (exit 3)', async () => {
    const refused = await admin(['list-signing-keys'], 'worker');
    expect(refused.code).toBe(3);
    expect(refused.stderr).toBe('task-broker admin list-signing-keys: PERMISSION_DENIED: ListSigningKeys is for admins only\n');
  });

  it('serve refuses a pre-publication period below the JWKS cache lifetime plus the key refresh interval (exit 2)', async () => {
    const short = await runCli(['serve'], {
      env: devCaServeEnv(pki, TD, { TASK_BROKER_DATA_DIR: join(dir, 'unused'), TASK_BROKER_KEY_PRE_PUBLICATION: '89s' }),
    });
    expect(short.code).toBe(2);
    expect(short.stderr).toContain(
      "--key-pre-publication must be at least 90s: the JWKS cache lifetime (60s) plus the replicas' key refresh interval (30s); " +
        'shorter, a verifier could meet a new key before its cached key set has it (got 1m29s)',
    );
  });
});
