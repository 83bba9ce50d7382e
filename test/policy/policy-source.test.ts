/**
 * Policy sources: a static one, and a file followed on disk (in-place writes and rename-over),
 * where a broken new file keeps the last good policy and the log says why.
 */
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PolicyError, type Policy } from '../../src/policy/policy.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { FilePolicySource, StaticPolicySource } from '../../src/policy/policy-source.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { capturedLogger } from '../helpers/logs.js';

const WORKER = 'spiffe://example.org/ns/billing/sa/worker';
const AUDIENCE = 'spiffe://example.org/ns/billing/sa/invoices';

function policyText(ruleName: string, action: string): string {
  return `version: 1
rules:
  - name: ${ruleName}
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["${action}"]
    audiences: ["${AUDIENCE}"]
    scopes: ["*"]
`;
}

const decide = (policy: Policy | undefined, action: string) => policy?.decide({ caller: SpiffeId.parse(WORKER), action, audience: AUDIENCE, scopes: [] });

/**
 * Polls `condition` every 10 ms until it holds. The change it waits for ends the wait; the timeout
 * (well below the test's) only catches a watcher that never delivers, however loaded the machine.
 */
async function waitFor(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

let dir: string;
const sources: FilePolicySource[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-policy-'));
});
afterEach(async () => {
  for (const s of sources.splice(0)) s.close();
  await rm(dir, { recursive: true, force: true });
});

async function load(path: string, logger = capturedLogger().logger): Promise<FilePolicySource> {
  const source = await FilePolicySource.load(path, { logger, pollIntervalMs: 50 });
  sources.push(source);
  return source;
}

/** policy.yaml in the test's dir with one rule, followed, with what the source logs. */
async function followedPolicyFile(ruleName: string, action: string) {
  const path = join(dir, 'policy.yaml');
  await writeFile(path, policyText(ruleName, action));
  const { logger, lines } = capturedLogger();
  return { path, source: await load(path, logger), lines };
}

describe('StaticPolicySource', () => {
  it('returns its policy, or undefined for none, and never changes', () => {
    expect(new StaticPolicySource(undefined).status()).toEqual({ reloadFailures: 0 });
    const policy = parsePolicy(policyText('r', 'a'), 'static');
    const source = new StaticPolicySource(policy);
    expect(source.current()).toBe(policy);
    let called = false;
    const unsubscribe = source.onChange(() => (called = true));
    unsubscribe();
    source.close();
    expect(source.current()).toBe(policy);
    expect(called).toBe(false);
    expect(new StaticPolicySource(undefined).current()).toBeUndefined();
  });
});

describe('FilePolicySource', () => {
  it('loads the file and logs the digest and rule count', async () => {
    const { path, source, lines } = await followedPolicyFile('first', 'a');
    expect(source.current().rules.map((r) => r.name)).toEqual(['first']);
    expect(source.current().source).toBe(path);
    expect(decide(source.current(), 'a')?.allowed).toBe(true);
    expect(lines()).toContainEqual(expect.objectContaining({ level: 'info', msg: 'policy loaded', path, digest: source.current().digest, rules: 1 }));
  });

  it('refuses to start on a broken or missing file with a PolicyError', async () => {
    const broken = join(dir, 'broken.yaml');
    await writeFile(broken, 'version: 1\nrules: []\nextra: true\n');
    await expect(load(broken)).rejects.toThrow(PolicyError);
    await expect(load(broken)).rejects.toThrow(`${broken}: extra: unknown key`);
    const missing = join(dir, 'missing.yaml');
    await expect(load(missing)).rejects.toThrow(PolicyError);
    await expect(load(missing)).rejects.toThrow(/cannot read the policy file: ENOENT/);
  });

  it('picks up an in-place write, tells listeners, and logs the new digest', async () => {
    const { path, source, lines } = await followedPolicyFile('first', 'a');
    const seen: Policy[] = [];
    source.onChange((p) => seen.push(p));
    const firstDigest = source.current().digest;

    await writeFile(path, policyText('second', 'b'));
    await waitFor(() => source.current().rules[0]?.name === 'second', 'the in-place write');
    expect(decide(source.current(), 'b')?.allowed).toBe(true);
    expect(decide(source.current(), 'a')?.allowed).toBe(false);
    expect(source.current().digest).not.toBe(firstDigest);
    expect(seen.map((p) => p.rules[0]?.name)).toEqual(['second']);
    expect(lines()).toContainEqual(
      expect.objectContaining({ level: 'info', msg: 'policy reloaded', path, digest: source.current().digest, previousDigest: firstDigest, rules: 1 }),
    );
  });

  it('picks up a file written elsewhere and renamed over it', async () => {
    const { path, source } = await followedPolicyFile('first', 'a');
    const temp = join(dir, '.policy.yaml.tmp');
    await writeFile(temp, policyText('renamed', 'c'));
    await rename(temp, path);
    await waitFor(() => source.current().rules[0]?.name === 'renamed', 'the rename-over');
    expect(decide(source.current(), 'c')?.allowed).toBe(true);
  });

  it('follows a Kubernetes ConfigMap update (the ..data symlink swap)', async () => {
    // The layout kubelet writes: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/
    await mkdir(join(dir, '..v1'));
    await writeFile(join(dir, '..v1', 'policy.yaml'), policyText('v1', 'a'));
    await symlink('..v1', join(dir, '..data'));
    await symlink(join('..data', 'policy.yaml'), join(dir, 'policy.yaml'));
    const source = await load(join(dir, 'policy.yaml'));
    expect(source.current().rules[0]?.name).toBe('v1');

    await mkdir(join(dir, '..v2'));
    await writeFile(join(dir, '..v2', 'policy.yaml'), policyText('v2', 'b'));
    await symlink('..v2', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..v1'), { recursive: true });
    await waitFor(() => source.current().rules[0]?.name === 'v2', 'the ..data swap');
    expect(decide(source.current(), 'b')?.allowed).toBe(true);
  });

  it('keeps the last good policy when the new file is broken, logs why, and takes the fixed file', async () => {
    const { path, source, lines } = await followedPolicyFile('good', 'a');
    const good = source.current();
    const seen: string[] = [];
    source.onChange((p) => seen.push(p.rules[0]?.name ?? ''));

    // An in-place write may be read half-written; wait for the line about the complete file.
    const errorAbout = (text: string) => lines().find((l) => l.level === 'error' && String(l.msg).includes(text));
    await writeFile(path, policyText('broken', 'a').replace('actions:', 'actoins:'));
    await waitFor(() => errorAbout('actoins') !== undefined, 'the error log line');
    const error = errorAbout('actoins');
    expect(error).toMatchObject({ path, keptDigest: good.digest });
    expect(String(error?.msg)).toContain(`policy reload failed; keeping the last good policy: policy ${path} line 5, column 5: rules[0].actoins: unknown key`);
    expect(String(error?.msg)).toMatch(/: fix the file \(check it with: task-broker policy check --policy \S+\)$/);
    expect(String(error?.err)).toContain(`${path}: rules[0].actoins: unknown key`);
    expect(source.current()).toBe(good);
    expect(decide(source.current(), 'a')?.allowed).toBe(true);

    // A file that is not YAML at all is refused the same way.
    await writeFile(path, 'version: 1\nrules: [\n');
    await source.reload(); // resolves once the complete file has been handled
    expect(errorAbout('not valid YAML')).toMatchObject({ path, keptDigest: good.digest });
    expect(source.current()).toBe(good);
    // Each refused version is counted (the task_broker_policy_reload_failures_total metric).
    const failed = source.status();
    expect(failed.reloadFailures).toBeGreaterThanOrEqual(2);
    expect(failed.lastReloadError).toMatch(/not valid YAML/);
    expect(failed.lastReloadFailedAt).toBeInstanceOf(Date);

    await writeFile(path, policyText('fixed', 'd'));
    await waitFor(() => source.current().rules[0]?.name === 'fixed', 'the fixed file');
    expect(decide(source.current(), 'd')?.allowed).toBe(true);
    expect(seen).toEqual(['fixed']);
    expect(lines()).toContainEqual(expect.objectContaining({ level: 'info', msg: 'policy reloaded', digest: source.current().digest }));
  });

  it('keeps the last good policy when the file disappears', async () => {
    const { path, source, lines } = await followedPolicyFile('good', 'a');
    const good = source.current();
    await rm(path);
    await waitFor(() => lines().some((l) => l.level === 'error'), 'the error log line');
    expect(String(lines().find((l) => l.level === 'error')?.msg)).toMatch(/ENOENT/);
    expect(source.current()).toBe(good);
  });

  it('stops following the file after close, and an unsubscribed listener hears nothing', async () => {
    const { path, source } = await followedPolicyFile('first', 'a');
    let calls = 0;
    const unsubscribe = source.onChange(() => calls++);
    unsubscribe();
    await writeFile(path, policyText('second', 'b'));
    await waitFor(() => source.current().rules[0]?.name === 'second', 'the reload');
    expect(calls).toBe(0);

    source.close();
    await writeFile(path, policyText('third', 'c'));
    await source.reload();
    // Nothing can be awaited for an event that must not happen: give the 50 ms poll a few rounds.
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect(source.current().rules[0]?.name).toBe('second');
  });
});
