/**
 * `task-broker policy check` through the real binary: allow, deny with the reason, JSON output,
 * admin checks, and the exit codes scripts rely on (0 allow, 3 deny, 2 usage, 1 broken file).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { tempDirForFile } from '../helpers/cleanup.js';
import { cliTimeout, runCli } from '../helpers/cli.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/policy.yaml', import.meta.url));
const WORKER = 'spiffe://example.org/ns/billing/sa/worker';
const INVOICES = 'spiffe://example.org/ns/billing/sa/invoices';
// Keep a TASK_BROKER_POLICY from the developer's shell out of the usage-error tests.
const env = { TASK_BROKER_POLICY: '' };

const check = (...args: string[]) => runCli(['policy', 'check', ...args], { env });
/** The billing worker asking to export invoices, with `more` flags. */
const workerExport = (...more: string[]) => check('--policy', EXAMPLE, '--caller', WORKER, '--action', 'invoice.export', '--audience', INVOICES, ...more);

const dir = tempDirForFile('tb-policy-cli-');

describe('task-broker policy check', () => {
  it('allows a request a rule allows: exit 0, names the rule, the approval, the token ttl cap and the digest', async () => {
    const result = await workerExport('--scope', 'invoices:read', '--scope', 'invoices:list', '--ttl', '30m');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('ALLOW by rule "billing-export" (approval required: no; token ttl capped at 300s; results kept 3600s)');
    expect(result.stdout).toMatch(/digest [A-Za-z0-9_-]{43}/);
  });

  it('checks a gateway against the rule’s gateways, and says how long results are kept', async () => {
    const agent = 'spiffe://example.org/ns/agents/sa/alice';
    const mcp = 'spiffe://example.org/ns/mcp/sa/mcp-server';
    const ask = (...more: string[]) =>
      check('--policy', EXAMPLE, '--caller', agent, '--action', 'report.generate', '--audience', mcp, '--scope', 'reports:read', ...more);
    const allowed = await ask('--gateway', mcp);
    expect(allowed.code, allowed.stderr).toBe(0);
    expect(allowed.stdout).toContain('ALLOW by rule "mcp-reports" (approval required: no; token ttl not capped by the policy; results kept 1800s)');
    const denied = await ask('--gateway', 'spiffe://example.org/ns/mcp/sa/impostor');
    expect(denied.code).toBe(3);
    expect(denied.stdout).toContain('DENY: rule "mcp-reports": gateway spiffe://example.org/ns/mcp/sa/impostor is not allowed by gateways');
  });

  it('reports required approval', async () => {
    const result = await check(
      '--policy',
      EXAMPLE,
      '--caller',
      'spiffe://partner.test/reporter',
      '--action',
      'report.read',
      '--audience',
      'spiffe://example.org/ns/reports/sa/api',
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('ALLOW by rule "partner-reports" (approval required: yes; token ttl capped at 60s; results kept 3600s)');
  });

  it('denies with the reason: exit 3', { timeout: cliTimeout(3) }, async () => {
    const action = await check('--policy', EXAMPLE, '--caller', WORKER, '--action', 'invoice.delete', '--audience', INVOICES);
    expect(action.code, action.stderr).toBe(3);
    expect(action.stdout).toContain('DENY: rule "billing-export": action "invoice.delete" is not allowed');

    const ttl = await workerExport('--ttl', '2h');
    expect(ttl.code).toBe(3);
    expect(ttl.stdout).toContain('DENY: rule "billing-export": task ttl 7200s exceeds max_task_ttl 3600s');

    const stranger = await check('--policy', EXAMPLE, '--caller', 'spiffe://other.org/x', '--action', 'invoice.export', '--audience', INVOICES);
    expect(stranger.code).toBe(3);
    expect(stranger.stdout).toContain('DENY: no rule matches caller spiffe://other.org/x');
  });

  it('prints the decision as one JSON object with --json', { timeout: cliTimeout(2) }, async () => {
    const allow = await workerExport('--json');
    expect(allow.code, allow.stderr).toBe(0);
    const allowed = JSON.parse(allow.stdout) as Record<string, unknown>;
    expect(allowed).toEqual({
      allowed: true,
      rule: 'billing-export',
      requireApproval: false,
      readChildren: false,
      bindSession: false,
      resultRetentionSeconds: 3600,
      maxTokenTtlSeconds: 300,
      policyDigest: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
    });

    const deny = await workerExport('--scope', 'invoices:write', '--json');
    expect(deny.code).toBe(3);
    expect(JSON.parse(deny.stdout)).toEqual({
      allowed: false,
      reason: 'rule "billing-export": scope "invoices:write" is not allowed',
      policyDigest: allowed.policyDigest,
    });
  });

  it('checks admins with --admin (no --action or --audience needed)', { timeout: cliTimeout(2) }, async () => {
    const admin = await check('--policy', EXAMPLE, '--caller', 'spiffe://example.org/ns/platform/sa/oncall/alice', '--admin');
    expect(admin.code, admin.stderr).toBe(0);
    expect(admin.stdout).toContain(
      'ALLOW: spiffe://example.org/ns/platform/sa/oncall/alice is an admin (admins entry "spiffe://example.org/ns/platform/sa/oncall/**")',
    );

    const notAdmin = await check('--policy', EXAMPLE, '--caller', WORKER, '--admin', '--json');
    expect(notAdmin.code).toBe(3);
    expect(JSON.parse(notAdmin.stdout)).toMatchObject({ allowed: false, reason: `caller ${WORKER} is not an admin` });
  });

  it('exits 1 with the PolicyError on stderr for a broken or missing policy file; --policy alone validates', { timeout: cliTimeout(4) }, async () => {
    const broken = join(dir(), 'broken.yaml');
    await writeFile(
      broken,
      'version: 1\nrules:\n  - name: x\n    callers: { spiffe_ids: ["spiffe://example.org/a"] }\n    actions: ["*"]\n    audiences: ["spiffe://example.org/ns/*-x"]\n    scopes: ["*"]\n',
    );
    const result = await check('--policy', broken, '--caller', WORKER, '--action', 'a', '--audience', INVOICES);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`policy ${broken} line 6, column 17: rules[0].audiences[0]: spiffe id pattern "spiffe://example.org/ns/*-x"`);
    expect(result.stdout).not.toMatch(/ALLOW|DENY/);

    // --policy alone validates the file: the same line, column and advice; exit 1.
    const validateBroken = await check('--policy', broken);
    expect(validateBroken.code).toBe(1);
    expect(validateBroken.stderr).toContain(`policy ${broken} line 6, column 17: rules[0].audiences[0]`);
    expect(validateBroken.stderr).toMatch(/: fix the file\n$/);
    const validateGood = await check('--policy', EXAMPLE);
    expect(validateGood.code, validateGood.stderr).toBe(0);
    expect(validateGood.stdout).toMatch(new RegExp(`^OK: policy ${EXAMPLE.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is valid \\(\\d+ rules; digest \\S+\\)\\n$`));

    const missing = await check('--policy', join(dir(), 'nope.yaml'), '--caller', WORKER, '--admin');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot read the policy file: ENOENT/);
  });

  it('exits 2 on usage errors: a missing flag, a bad SPIFFE ID, a bad --ttl', { timeout: cliTimeout(4) }, async () => {
    const noAction = await check('--policy', EXAMPLE, '--caller', WORKER, '--audience', INVOICES);
    expect(noAction.code).toBe(2);
    expect(noAction.stderr).toContain('--action is required');

    const noPolicy = await check('--caller', WORKER, '--admin');
    expect(noPolicy.code).toBe(2);
    expect(noPolicy.stderr).toContain('--policy is required');

    const badCaller = await check('--policy', EXAMPLE, '--caller', 'spiffe://Example.org/x', '--admin');
    expect(badCaller.code).toBe(2);
    expect(badCaller.stderr).toContain('--caller: spiffeid:');

    const badTtl = await check('--policy', EXAMPLE, '--caller', WORKER, '--action', 'a', '--audience', INVOICES, '--ttl', 'forever');
    expect(badTtl.code).toBe(2);
    expect(badTtl.stderr).toContain('--ttl: duration must');
  });

  it('has --help describing every option', async () => {
    const result = await runCli(['policy', 'check', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^Usage: task-broker policy check/);
    for (const flag of [
      '--policy FILE',
      '--caller SPIFFE_ID',
      '--action ACTION',
      '--audience SPIFFE_ID',
      '--scope SCOPE',
      '--ttl DURATION',
      '--admin',
      '--json',
    ]) {
      expect(result.stdout).toContain(flag);
    }
    expect(result.stdout).toContain('Exit status: 0 allowed, 3 denied');
  });
});
