/**
 * The real `task-broker` binary's error lines: one line on stderr, no stack, naming the file or
 * address, what is wrong and what to do; the exit codes as before (1 for each of these).
 *
 * - `admin` with the broker down (127.0.0.1:1), with a bundle that lacks the broker's CA (against
 *   a real `serve`), with an SVID key that is not the certificate's;
 * - `serve` with an SVID key that is not the certificate's, and with a broken `--policy`;
 * - `policy check` with a broken policy file (line and column);
 * - `dev-ca mint` with a CA key that is not the CA certificate's;
 * - a running `serve` whose policy file breaks: the reload failure in its log has the line.
 */
import { copyFile, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliTimeout, runCli, type CliResult } from '../helpers/cli.js';
import { devCaServeEnv } from '../helpers/dev-ca-files.js';
import { createServePki, startServe, type MintedSvid, type ServePki, type ServeProcess } from '../helpers/serve-process.js';

const ADMIN_ID = 'spiffe://example.org/ns/platform/sa/admin';

// Line numbers below count from "version: 1" as line 1.
const POLICY = `version: 1
admins: ["${ADMIN_ID}"]
rules:
  - name: demo
    callers: { trust_domains: [example.org] }
    actions: ["*"]
    audiences: ["spiffe://example.org/**"]
    scopes: ["*"]
`;
/** rules[0].scopes is not a list: line 8, column 5. */
const SCOPES_NOT_A_LIST = POLICY.replace('scopes: ["*"]', 'scopes: everything');
/** An unclosed flow list: a YAML syntax error on line 7. */
const UNCLOSED_LIST = POLICY.replace('audiences: ["spiffe://example.org/**"]', 'audiences: ["spiffe://example.org/**"\n  oops: 1');

let dir: string;
let pki: ServePki;
let admin: MintedSvid;
let other: MintedSvid;
let rogueBundle: string;
let policyPath: string;
let broker: ServeProcess;

// Steps: dev-ca init and mint (createServePki), the other mints and the rogue CA, the broker's start.
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-cli-errors-'));
  pki = await createServePki(join(dir, 'pki'));
  const rogue = join(dir, 'rogue');
  let rogueInit: CliResult;
  [admin, other, rogueInit] = await Promise.all([
    pki.mint(ADMIN_ID, 'admin'),
    pki.mint(ADMIN_ID, 'other'),
    // Another CA that calls itself example.org: its certificate is the wrong bundle.
    runCli(['dev-ca', 'init', '--dir', rogue, '--trust-domain', 'example.org']),
  ]);
  expect(rogueInit.code, rogueInit.stderr).toBe(0);
  rogueBundle = join(rogue, 'ca.pem');
  policyPath = join(dir, 'policy.yaml');
  await writeFile(policyPath, POLICY);
  broker = await startServe({ pki, policyYaml: POLICY, env: { TASK_BROKER_POLICY: policyPath } });
}, cliTimeout(5));

afterAll(async () => {
  if (broker) expect(await broker.stop()).toBe(0);
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `task-broker admin list-tasks` as the admin, against `address`, with `overrides` of the SVID files. */
function listTasks(address: string, overrides: { bundle?: string; key?: string } = {}): Promise<CliResult> {
  return runCli([
    'admin',
    'list-tasks',
    '--broker',
    address,
    '--broker-id',
    pki.brokerId,
    '--svid-cert',
    admin.certPath,
    '--svid-key',
    overrides.key ?? admin.keyPath,
    '--bundle',
    overrides.bundle ?? pki.bundlePath,
    '--timeout',
    '60s',
  ]);
}

/** The process failed with exit code 1 and printed exactly `line` on stderr, nothing on stdout. */
function expectOneLine(result: CliResult, line: string): void {
  expect(result.code, result.stderr).toBe(1);
  expect(result.stderr).toBe(`${line}\n`);
  expect(result.stdout).toBe('');
}

describe('task-broker admin', () => {
  it('broker down at 127.0.0.1:1: the address, "connection refused", and --broker to check', { timeout: cliTimeout(1) }, async () => {
    expectOneLine(
      await listTasks('127.0.0.1:1'),
      'task-broker admin list-tasks: UNAVAILABLE: cannot reach the broker at 127.0.0.1:1: connection refused (is task-broker serve running and listening there? check --broker)',
    );
  });

  it('a --bundle without the broker’s CA: names the bundle file, the reason and --bundle', { timeout: cliTimeout(2) }, async () => {
    expectOneLine(
      await listTasks(broker.address, { bundle: rogueBundle }),
      `task-broker admin list-tasks: UNAVAILABLE: the broker at ${broker.address} presented a certificate that does not chain to the trust bundle ${rogueBundle} (unable to verify the first certificate): pass the bundle of the broker's trust domain with --bundle`,
    );
    // With the right bundle the same command works: the bundle was what was wrong.
    const ok = await listTasks(broker.address);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it('an --svid-key that is not the certificate’s: names both files and what to give', { timeout: cliTimeout(1) }, async () => {
    expectOneLine(
      await listTasks(broker.address, { key: other.keyPath }),
      `task-broker admin list-tasks: SVID key ${other.keyPath} does not match the certificate in ${admin.certPath} (its public key differs): give --svid-key the private key that was issued with this certificate`,
    );
  });
});

describe('task-broker serve', () => {
  /** `serve` on the dev-ca files, with `env` over them; it must fail before it listens. */
  function serve(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
    return runCli(['serve', ...args], {
      env: devCaServeEnv(pki.dir, pki.trustDomain, { TASK_BROKER_DATA_DIR: join(dir, 'never-used'), TASK_BROKER_POLICY: policyPath, ...env }),
    });
  }

  it('an SVID key that is not the certificate’s: one line naming both files', { timeout: cliTimeout(1) }, async () => {
    const result = await serve([], { TASK_BROKER_SVID_KEY: other.keyPath });
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toBe(
      `task-broker serve: SVID key ${other.keyPath} does not match the certificate in ${join(pki.dir, 'broker.pem')} (its public key differs): give the private key that was issued with this certificate\n`,
    );
  });

  it('a broken --policy: the file, line and column, and how to check the fixed file', { timeout: cliTimeout(2) }, async () => {
    const broken = join(dir, 'serve-broken.yaml');
    await writeFile(broken, SCOPES_NOT_A_LIST);
    const result = await serve(['--policy', broken], {});
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toBe(
      `task-broker serve: policy ${broken} line 8, column 5: rules[0].scopes: must be a list, got "everything": fix the file (check it with: task-broker policy check --policy ${broken})\n`,
    );

    // A YAML syntax error carries its line too.
    await writeFile(broken, UNCLOSED_LIST);
    const syntax = await serve(['--policy', broken], {});
    expect(syntax.code, syntax.stderr).toBe(1);
    expect(syntax.stderr).toMatch(
      new RegExp(`^task-broker serve: policy ${escape(broken)} line [78], column \\d+: not valid YAML: [^\\n]+: fix the file \\(check it with: `),
    );
    expect(syntax.stderr.split('\n')).toHaveLength(2); // one line, and the newline that ends it
  });
});

describe('task-broker policy check', () => {
  it('a broken policy file: the file, line and column, the field and what is wrong', { timeout: cliTimeout(1) }, async () => {
    const broken = join(dir, 'check-broken.yaml');
    await writeFile(broken, SCOPES_NOT_A_LIST);
    const result = await runCli(['policy', 'check', '--policy', broken, '--caller', ADMIN_ID, '--admin']);
    expectOneLine(result, `task-broker policy check: policy ${broken} line 8, column 5: rules[0].scopes: must be a list, got "everything": fix the file`);
  });
});

describe('task-broker dev-ca mint', () => {
  it('a ca.key that is not the ca.pem’s: names both files instead of minting SVIDs nothing verifies', { timeout: cliTimeout(1) }, async () => {
    const mixed = join(dir, 'mixed-ca');
    await mkdir(mixed);
    await copyFile(pki.bundlePath, join(mixed, 'ca.pem'));
    await copyFile(join(rogueBundle, '..', 'ca.key'), join(mixed, 'ca.key'));
    const result = await runCli(['dev-ca', 'mint', '--dir', mixed, '--spiffe-id', 'spiffe://example.org/ns/demo/sa/worker']);
    expectOneLine(
      result,
      `task-broker dev-ca mint: dev CA key ${join(mixed, 'ca.key')} does not match the certificate in ${join(mixed, 'ca.pem')} (its public key differs): put back the ca.key written with this ca.pem, or make a new CA with 'task-broker dev-ca init --force'`,
    );
    expect((await readdir(mixed)).sort()).toEqual(['ca.key', 'ca.pem']);
  });
});

describe('a running serve whose policy file breaks', () => {
  it('logs the reload failure with the line, and keeps serving on the last good policy', { timeout: cliTimeout(2) }, async () => {
    // Renamed over, so the broker never reads a half-written file.
    await writeFile(`${policyPath}.new`, SCOPES_NOT_A_LIST);
    await rename(`${policyPath}.new`, policyPath);
    const failure = await broker.cli.waitForLog((l) => l.level === 'error' || (typeof l.msg === 'string' && l.msg.startsWith('policy reload failed')));
    expect(failure.msg).toBe(
      `policy reload failed; keeping the last good policy: policy ${policyPath} line 8, column 5: rules[0].scopes: must be a list, got "everything": fix the file (check it with: task-broker policy check --policy ${policyPath})`,
    );
    // The admin is still an admin: the last good policy is in force.
    const ok = await listTasks(broker.address);
    expect(ok.code, ok.stderr).toBe(0);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
