/**
 * Policy errors carry the line and column of what is wrong: YAML syntax errors where the parser
 * stopped, schema and semantic errors at the key (or list item) of the failing field, a missing
 * key at the mapping that lacks it. The one line for a person (policyErrorLine) names the file,
 * the place, the field, what is wrong and what to do.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observability/logger.js';
import { PolicyError } from '../../src/policy/policy.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { FilePolicySource, policyErrorLine, readPolicyFile } from '../../src/policy/policy-source.js';
import { tempDirForFile } from '../helpers/cleanup.js';

const dir = tempDirForFile('tb-policy-errors-');

// Line numbers below count from "version: 1" as line 1.
const POLICY = `version: 1
admins: ["spiffe://example.org/ns/platform/sa/admin"]
rules:
  - name: billing-export
    callers: { spiffe_ids: ["spiffe://example.org/ns/billing/sa/worker"] }
    actions: ["invoice.export"]
    audiences: ["spiffe://example.org/ns/billing/sa/invoices"]
    scopes: ["invoices:read"]
  - name: reports
    callers:
      trust_domains:
        - example.org
    actions: ["report.read"]
    audiences: ["spiffe://example.org/ns/reports/sa/api"]
    scopes: ["reports:read"]
    max_task_ttl: 1h
`;

function policyError(text: string, source = '/etc/task-broker/policy.yaml'): PolicyError {
  try {
    parsePolicy(text, source);
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyError);
    return err as PolicyError;
  }
  throw new Error('expected a PolicyError');
}

describe('the line and column of a policy error', () => {
  it('the valid document parses (the cases below each break one thing)', () => {
    expect(parsePolicy(POLICY, 'policy.yaml').rules.map((r) => r.name)).toEqual(['billing-export', 'reports']);
  });

  it.each([
    ['a field of the wrong type', POLICY.replace('scopes: ["reports:read"]', 'scopes: reports:read'), 'rules[1].scopes', 15, 5],
    [
      'a bad list item (on its own line)',
      POLICY.replace('        - example.org', '        - spiffe://example.org'),
      'rules[1].callers.trust_domains[0]',
      12,
      11,
    ],
    ['a bad item of a flow list', POLICY.replace('["invoice.export"]', '["invoice export"]'), 'rules[0].actions[0]', 6, 15],
    ['an unknown key', POLICY.replace('    max_task_ttl: 1h\n', '    max_task_tll: 1h\n'), 'rules[1].max_task_tll', 16, 5],
    ['a bad duration', POLICY.replace('max_task_ttl: 1h', 'max_task_ttl: soon'), 'rules[1].max_task_ttl', 16, 5],
    ['a required key that is missing: the rule that lacks it', POLICY.replace('    actions: ["report.read"]\n', ''), 'rules[1].actions', 9, 5],
    ['a semantic error across rules (duplicate rule name)', POLICY.replace('name: reports', 'name: billing-export'), 'rules[1].name', 9, 5],
    ['a top-level field', POLICY.replace('version: 1', 'version: 2'), 'version', 1, 1],
  ])('%s', (_name, text, path, line, column) => {
    const err = policyError(text);
    expect(err.path).toBe(path);
    expect(err.position).toEqual({ line, column });
    expect(err.located).toBe(`policy /etc/task-broker/policy.yaml line ${line}, column ${column}: ${path}: ${err.detail}`);
  });

  it('a repeated key: the second one, said once', () => {
    const err = policyError(POLICY.replace('    max_task_ttl: 1h\n', '    max_task_ttl: 1h\n    max_task_ttl: 2h\n'));
    expect(err.path).toBe('rules[1].max_task_ttl');
    expect(err.position).toEqual({ line: 17, column: 5 });
    expect(err.message).toBe('/etc/task-broker/policy.yaml: rules[1].max_task_ttl: duplicate key (at line 17, column 5)');
    expect(err.located).toBe('policy /etc/task-broker/policy.yaml line 17, column 5: rules[1].max_task_ttl: duplicate key');
  });

  it('a YAML syntax error: where the parser stopped, said once', () => {
    const err = policyError(POLICY.replace('actions: ["report.read"]', 'actions: ["report.read"'));
    expect(err.path).toBe('');
    expect(err.position?.line).toBe(14);
    // The message keeps the parser's words; the located line says the place once, first.
    expect(err.message).toMatch(/^\/etc\/task-broker\/policy\.yaml: not valid YAML: .* at line 14, column \d+$/);
    expect(err.located).toMatch(/^policy \/etc\/task-broker\/policy\.yaml line 14, column \d+: not valid YAML: [^\n]*[^\d]$/);
    expect(err.located).not.toMatch(/at line/);
  });

  it('an empty document has no line to point at', () => {
    const err = policyError('');
    expect(err.position).toBeUndefined();
    expect(err.located).toBe('policy /etc/task-broker/policy.yaml: the document is empty; expected a mapping');
  });

  it('the message stays "SOURCE: PATH: DETAIL" (what code and older tests match)', () => {
    const err = policyError(POLICY.replace('scopes: ["reports:read"]', 'scopes: reports:read'));
    expect(err.message).toBe('/etc/task-broker/policy.yaml: rules[1].scopes: must be a list, got "reports:read"');
  });
});

describe('policyErrorLine: one line, what is wrong and what to do', () => {
  it('a broken file: fix it, and how to check it offline', () => {
    const err = policyError(POLICY.replace('scopes: ["reports:read"]', 'scopes: reports:read'), '/p/policy.yaml');
    expect(policyErrorLine(err)).toBe(
      'policy /p/policy.yaml line 15, column 5: rules[1].scopes: must be a list, got "reports:read": fix the file (check it with: task-broker policy check --policy /p/policy.yaml)',
    );
    expect(policyErrorLine(err, { checkHint: false })).toBe(
      'policy /p/policy.yaml line 15, column 5: rules[1].scopes: must be a list, got "reports:read": fix the file',
    );
  });

  it('a file that cannot be read: check the path', async () => {
    const missing = join(dir(), 'missing.yaml');
    const err = await readPolicyFile(missing).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PolicyError);
    expect(policyErrorLine(err as PolicyError)).toMatch(
      new RegExp(`^policy ${missing.replace(/[.]/g, '\\.')}: cannot read the policy file: ENOENT.*: check the path and that the file is readable$`),
    );
  });

  it('FilePolicySource.load on a file that cannot be read: check the path; a document error with the same words: fix the file', async () => {
    const missing = join(dir(), 'missing.yaml');
    const err = await FilePolicySource.load(missing, { logger: silentLogger(), pollIntervalMs: 0 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PolicyError);
    expect((err as PolicyError).kind).toBe('unreadable');
    expect(policyErrorLine(err as PolicyError)).toMatch(/: cannot read the policy file: ENOENT.*: check the path and that the file is readable$/);
    // Only the kind says unreadable, not the wording of the detail.
    const lookalike = new PolicyError('/p/policy.yaml', '', 'cannot read the policy file: it is YAML 1.1');
    expect(policyErrorLine(lookalike, { checkHint: false })).toBe('policy /p/policy.yaml: cannot read the policy file: it is YAML 1.1: fix the file');
  });

  it('FilePolicySource.load refuses a broken file with its line', async () => {
    const path = join(dir(), 'broken.yaml');
    await writeFile(path, POLICY.replace('    max_task_ttl: 1h\n', '    max_task_tll: 1h\n'));
    const err = await FilePolicySource.load(path, { logger: silentLogger(), pollIntervalMs: 0 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PolicyError);
    expect((err as PolicyError).located).toMatch(
      new RegExp(`^policy ${path.replace(/[.]/g, '\\.')} line 16, column 5: rules\\[1\\]\\.max_task_tll: unknown key`),
    );
  });
});
