/**
 * The policy document: default deny, each rule condition, first-match order, denial reasons
 * that help an operator, admins, the digest, and strict validation with field paths.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { PolicyError, type Policy, type PolicyDecision, type PolicyRequest } from '../../src/policy/policy.js';
import { parseDurationSeconds, parsePolicy } from '../../src/policy/policy-document.js';
import { SpiffeId } from '../../src/spiffe/id.js';

const id = (s: string) => SpiffeId.parse(s);
const WORKER = 'spiffe://example.org/ns/billing/sa/worker';
const INVOICES = 'spiffe://example.org/ns/billing/sa/invoices';

/** A policy of one rule with sensible defaults; `extra` lines are appended to the rule. */
function oneRule(fields: Record<string, string>): Policy {
  const rule = {
    name: 'r1',
    callers: `{ spiffe_ids: ["${WORKER}"] }`,
    actions: '["invoice.export"]',
    audiences: `["${INVOICES}"]`,
    scopes: '["invoices:read", "invoices:list"]',
    ...fields,
  };
  const body = Object.entries(rule)
    .map(([k, v]) => `    ${k}: ${v}`)
    .join('\n');
  return parsePolicy(`version: 1\nrules:\n  - ${body.trimStart()}\n`, 'policy.yaml');
}

function request(overrides: Partial<PolicyRequest> & { caller?: SpiffeId } = {}): PolicyRequest {
  return { caller: id(WORKER), action: 'invoice.export', audience: INVOICES, scopes: ['invoices:read'], ...overrides };
}

function expectAllowed(decision: PolicyDecision): Extract<PolicyDecision, { allowed: true }> {
  if (!decision.allowed) throw new Error(`expected allowed, got denied: ${decision.reason}`);
  return decision;
}

function expectDenied(decision: PolicyDecision): string {
  if (decision.allowed) throw new Error(`expected denied, got allowed by ${decision.rule}`);
  return decision.reason;
}

/** The PolicyError message `text` produces. */
function errorOf(text: string): string {
  try {
    parsePolicy(text, 'policy.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyError);
    return (err as PolicyError).message;
  }
  throw new Error('expected a PolicyError');
}

const VALID_RULE = `
  - name: ok
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["a"]
    audiences: ["${INVOICES}"]
    scopes: ["s"]
`;

describe('Policy.decide', () => {
  it('denies everything when there are no rules', () => {
    const policy = parsePolicy('version: 1\nrules: []\n', 'policy.yaml');
    expect(policy.rules).toHaveLength(0);
    expect(expectDenied(policy.decide(request()))).toBe(`no rule matches caller ${WORKER} (the policy has no rules)`);
  });

  it('denies a caller no rule names, and says so', () => {
    const policy = oneRule({});
    const reason = expectDenied(policy.decide(request({ caller: id('spiffe://example.org/ns/billing/sa/other') })));
    expect(reason).toBe('no rule matches caller spiffe://example.org/ns/billing/sa/other');
  });

  it('allows a request that meets every condition and reports the rule', () => {
    const decision = expectAllowed(oneRule({}).decide(request()));
    expect(decision.rule).toBe('r1');
    expect(decision.requireApproval).toBe(false);
    expect(decision.maxTokenTtlSeconds).toBeUndefined();
  });

  describe('callers', () => {
    it('match an exact ID only', () => {
      const policy = oneRule({});
      expectAllowed(policy.decide(request()));
      expectDenied(policy.decide(request({ caller: id(`${WORKER}/x`) })));
      expectDenied(policy.decide(request({ caller: id('spiffe://example.com/ns/billing/sa/worker') })));
    });

    it('match by pattern: * is one segment, trailing ** one or more', () => {
      const star = oneRule({ callers: '{ spiffe_ids: ["spiffe://example.org/ns/*/sa/worker"] }' });
      expectAllowed(star.decide(request({ caller: id('spiffe://example.org/ns/payments/sa/worker') })));
      expectDenied(star.decide(request({ caller: id('spiffe://example.org/ns/a/b/sa/worker') })));
      const rest = oneRule({ callers: '{ spiffe_ids: ["spiffe://example.org/ns/billing/**"] }' });
      expectAllowed(rest.decide(request({ caller: id('spiffe://example.org/ns/billing/sa/x/y') })));
      expectDenied(rest.decide(request({ caller: id('spiffe://example.org/ns/billing') })));
    });

    it('match every ID of a listed trust domain, and only of it', () => {
      const policy = oneRule({ callers: '{ trust_domains: ["partner.test"] }' });
      expectAllowed(policy.decide(request({ caller: id('spiffe://partner.test/anything/at/all') })));
      expectAllowed(policy.decide(request({ caller: id('spiffe://partner.test') })));
      expectDenied(policy.decide(request({ caller: id('spiffe://evil.partner.test/x') })));
      expectDenied(policy.decide(request()));
    });

    it('combine spiffe_ids and trust_domains', () => {
      const policy = oneRule({ callers: `{ spiffe_ids: ["${WORKER}"], trust_domains: ["partner.test"] }` });
      expectAllowed(policy.decide(request()));
      expectAllowed(policy.decide(request({ caller: id('spiffe://partner.test/w') })));
      expect(policy.rules[0]?.callers.map(String)).toEqual([WORKER, 'spiffe://partner.test (any ID)']);
    });
  });

  it('actions: listed ones only, or any with "*"', () => {
    const listed = oneRule({ actions: '["invoice.export", "invoice.list"]' });
    expectAllowed(listed.decide(request({ action: 'invoice.list' })));
    expect(expectDenied(listed.decide(request({ action: 'invoice.delete' })))).toBe('rule "r1": action "invoice.delete" is not allowed');
    const any = oneRule({ actions: '["*"]' });
    expectAllowed(any.decide(request({ action: 'invoice.delete' })));
    expectAllowed(any.decide(request({ action: 'whatever.else' })));
  });

  it('audiences: exact IDs and patterns', () => {
    const exact = oneRule({});
    expect(expectDenied(exact.decide(request({ audience: `${INVOICES}2` })))).toBe(`rule "r1": audience ${INVOICES}2 is not allowed`);
    const pattern = oneRule({ audiences: '["spiffe://example.org/ns/billing/sa/**", "spiffe://example.org/ns/*/sa/reports"]' });
    expectAllowed(pattern.decide(request({ audience: 'spiffe://example.org/ns/billing/sa/a/b' })));
    expectAllowed(pattern.decide(request({ audience: 'spiffe://example.org/ns/ops/sa/reports' })));
    expectDenied(pattern.decide(request({ audience: 'spiffe://example.org/ns/billing' })));
    expectDenied(pattern.decide(request({ audience: 'spiffe://other.org/ns/billing/sa/a' })));
    expect(expectDenied(pattern.decide(request({ audience: 'https://billing.example.org' })))).toBe(
      'rule "r1": audience "https://billing.example.org" is not a valid SPIFFE ID',
    );
  });

  it('scopes: the requested ones must be a subset, or any with "*"', () => {
    const policy = oneRule({});
    expectAllowed(policy.decide(request({ scopes: [] })));
    expectAllowed(policy.decide(request({ scopes: ['invoices:read', 'invoices:list'] })));
    expect(expectDenied(policy.decide(request({ scopes: ['invoices:read', 'invoices:write'] })))).toBe('rule "r1": scope "invoices:write" is not allowed');
    expect(expectDenied(policy.decide(request({ scopes: ['a', 'invoices:list', 'b'] })))).toBe('rule "r1": scopes "a", "b" are not allowed');
    const any = oneRule({ scopes: '["*"]' });
    expectAllowed(any.decide(request({ scopes: ['invoices:write', 'admin:everything'] })));
  });

  it('max_task_ttl: a longer task ttl is denied; no ttl given is not checked', () => {
    const policy = oneRule({ max_task_ttl: '1h' });
    expect(policy.rules[0]?.maxTaskTtlSeconds).toBe(3600);
    expectAllowed(policy.decide(request({ taskTtlSeconds: 3600 })));
    expectAllowed(policy.decide(request()));
    expect(expectDenied(policy.decide(request({ taskTtlSeconds: 3601 })))).toBe('rule "r1": task ttl 3601s exceeds max_task_ttl 3600s');
    expectAllowed(oneRule({}).decide(request({ taskTtlSeconds: 10 * 86_400 })));
  });

  it('max_token_ttl is returned with the decision', () => {
    expect(expectAllowed(oneRule({ max_token_ttl: '5m' }).decide(request())).maxTokenTtlSeconds).toBe(300);
    expect(expectAllowed(oneRule({ max_token_ttl: '90' }).decide(request())).maxTokenTtlSeconds).toBe(90);
  });

  it('require_approval is returned with the decision', () => {
    expect(expectAllowed(oneRule({ require_approval: 'true' }).decide(request())).requireApproval).toBe(true);
    expect(expectAllowed(oneRule({ require_approval: 'false' }).decide(request())).requireApproval).toBe(false);
  });

  it('tries rules in document order: the first that allows wins', () => {
    const policy = parsePolicy(
      `version: 1
rules:
  - name: narrow
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read"]
    require_approval: true
  - name: broad
    callers: { trust_domains: ["example.org"] }
    actions: ["*"]
    audiences: ["spiffe://example.org/**"]
    scopes: ["*"]
    max_token_ttl: 1m
`,
      'policy.yaml',
    );
    const first = expectAllowed(policy.decide(request()));
    expect(first).toMatchObject({ rule: 'narrow', requireApproval: true });
    // "narrow" fails (scope), so the later "broad" rule decides.
    const second = expectAllowed(policy.decide(request({ scopes: ['invoices:write'] })));
    expect(second).toMatchObject({ rule: 'broad', requireApproval: false, maxTokenTtlSeconds: 60 });
  });

  it('names each caller-matching rule and the first condition it failed', () => {
    const policy = parsePolicy(
      `version: 1
rules:
  - name: billing-export
    callers: { spiffe_ids: ["spiffe://example.org/ns/*/sa/worker"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read"]
  - name: unrelated
    callers: { trust_domains: ["partner.test"] }
    actions: ["*"]
    audiences: ["spiffe://example.org/**"]
    scopes: ["*"]
  - name: ops
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.delete"]
    audiences: ["spiffe://example.org/ns/ops/**"]
    scopes: ["*"]
`,
      'policy.yaml',
    );
    const reason = expectDenied(policy.decide(request({ action: 'invoice.delete', scopes: ['invoices:write'] })));
    expect(reason).toBe(`rule "billing-export": action "invoice.delete" is not allowed; rule "ops": audience ${INVOICES} is not allowed`);
    expect(reason).not.toContain('unrelated');
  });

  it('puts the policy digest into every decision', () => {
    const policy = oneRule({});
    expect(policy.decide(request()).policyDigest).toBe(policy.digest);
    expect(policy.decide(request({ action: 'x' })).policyDigest).toBe(policy.digest);
    expect(policy.adminDecision(id(WORKER)).policyDigest).toBe(policy.digest);
  });
});

describe('Policy.adminDecision', () => {
  const policy = parsePolicy(
    `version: 1
admins:
  - spiffe://example.org/ns/platform/sa/admin
  - spiffe://example.org/ns/oncall/**
rules: []
`,
    'policy.yaml',
  );

  it('allows exact and pattern admins and names the entry that matched', () => {
    expect(policy.adminDecision(id('spiffe://example.org/ns/platform/sa/admin'))).toEqual({
      allowed: true,
      entry: 'spiffe://example.org/ns/platform/sa/admin',
      policyDigest: policy.digest,
    });
    expect(policy.adminDecision(id('spiffe://example.org/ns/oncall/sa/alice'))).toMatchObject({ allowed: true, entry: 'spiffe://example.org/ns/oncall/**' });
  });

  it('denies anyone else, with a reason', () => {
    expect(policy.adminDecision(id(WORKER))).toEqual({ allowed: false, reason: `caller ${WORKER} is not an admin`, policyDigest: policy.digest });
    expect(policy.adminDecision(id('spiffe://example.org/ns/oncall'))).toMatchObject({ allowed: false });
    expect(policy.adminDecision(id('spiffe://other.org/ns/platform/sa/admin'))).toMatchObject({ allowed: false });
  });

  it('has no admins when the list is absent', () => {
    const none = parsePolicy('version: 1\nrules: []\n', 'p');
    expect(none.adminDecision(id('spiffe://example.org/ns/platform/sa/admin'))).toMatchObject({
      allowed: false,
      reason: expect.stringContaining('names no admins'),
    });
  });
});

describe('digest and source', () => {
  it('is the base64url SHA-256 of the text and changes with it', () => {
    const text = 'version: 1\nrules: []\n';
    const a = parsePolicy(text, 'a.yaml');
    expect(a.digest).toBe(createHash('sha256').update(text).digest('base64url'));
    expect(a.digest).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(a.source).toBe('a.yaml');
    expect(parsePolicy(text, 'b.yaml').digest).toBe(a.digest);
    expect(parsePolicy(`${text}# a comment\n`, 'a.yaml').digest).not.toBe(a.digest);
  });

  it('parses the shipped example', async () => {
    const text = await readFile(new URL('../../examples/policy.yaml', import.meta.url), 'utf8');
    const policy = parsePolicy(text, 'examples/policy.yaml');
    expect(policy.rules.map((r) => r.name)).toEqual(['billing-export', 'partner-reports', 'ci-staging']);
    expect(expectAllowed(policy.decide(request())).rule).toBe('billing-export');
  });
});

describe('validation', () => {
  it.each<[string, string, RegExp | string]>([
    ['unknown top-level key', `version: 1\nrule: []\nrules: []\n`, 'policy.yaml: rule: unknown key (expected one of: version, admins, rules)'],
    ['unknown key inside a rule', `version: 1\nrules:${VALID_RULE}    require_aproval: true\n`, /^policy\.yaml: rules\[0\]\.require_aproval: unknown key/],
    [
      'unknown key inside callers',
      `version: 1\nrules:\n  - name: x\n    callers: { spiffe_id: ["${WORKER}"] }\n    actions: [a]\n    audiences: ["${INVOICES}"]\n    scopes: [s]\n`,
      /^policy\.yaml: rules\[0\]\.callers\.spiffe_id: unknown key/,
    ],
    ['duplicate rule name', `version: 1\nrules:${VALID_RULE}${VALID_RULE}`, 'policy.yaml: rules[1].name: duplicate rule name "ok" (also rules[0])'],
    ['bad rule name', `version: 1\nrules:${VALID_RULE.replace('name: ok', 'name: Bad Name')}`, /^policy\.yaml: rules\[0\]\.name: "Bad Name" must be/],
    [
      'bad audience pattern',
      `version: 1\nrules:${VALID_RULE}${VALID_RULE.replace('name: ok', 'name: two').replace(INVOICES, 'spiffe://example.org/ns/billing-*')}`,
      'policy.yaml: rules[1].audiences[0]: spiffe id pattern "spiffe://example.org/ns/billing-*": "billing-*": a wildcard must be a whole segment (\'*\' or a trailing \'**\')',
    ],
    [
      'bad caller ID',
      `version: 1\nrules:${VALID_RULE.replace(WORKER, 'spiffe://Example.org/x')}`,
      /^policy\.yaml: rules\[0\]\.callers\.spiffe_ids\[0\]: spiffe id pattern "spiffe:\/\/Example\.org\/x": /,
    ],
    [
      'wildcard trust domain',
      `version: 1\nadmins: ["spiffe://*/admin"]\nrules: []\n`,
      /^policy\.yaml: admins\[0\]: spiffe id pattern "spiffe:\/\/\*\/admin": the trust domain cannot contain a wildcard/,
    ],
    [
      'bad trust domain',
      `version: 1\nrules:\n  - name: x\n    callers: { trust_domains: ["Partner.test"] }\n    actions: [a]\n    audiences: ["${INVOICES}"]\n    scopes: [s]\n`,
      /^policy\.yaml: rules\[0\]\.callers\.trust_domains\[0\]: trust domain "Partner\.test": /,
    ],
    [
      'trust domain given as an ID',
      `version: 1\nrules:\n  - name: x\n    callers: { trust_domains: ["spiffe://partner.test"] }\n    actions: [a]\n    audiences: ["${INVOICES}"]\n    scopes: [s]\n`,
      /^policy\.yaml: rules\[0\]\.callers\.trust_domains\[0\]: .*without spiffe:\/\//,
    ],
    [
      'bad duration',
      `version: 1\nrules:${VALID_RULE}    max_task_ttl: 1 hour\n`,
      'policy.yaml: rules[0].max_task_ttl: duration must be whole seconds or look like 90s, 5m, 1h or 7d, got "1 hour"',
    ],
    [
      'fractional duration',
      `version: 1\nrules:${VALID_RULE}    max_token_ttl: 1.5\n`,
      /^policy\.yaml: rules\[0\]\.max_token_ttl: duration must be whole seconds/,
    ],
    ['zero duration', `version: 1\nrules:${VALID_RULE}    max_token_ttl: 0s\n`, 'policy.yaml: rules[0].max_token_ttl: duration must be positive, got "0s"'],
    ['wrong version', `version: 2\nrules: []\n`, 'policy.yaml: version: must be 1, got number 2'],
    ['version as a string', `version: "1"\nrules: []\n`, 'policy.yaml: version: must be 1, got "1"'],
    ['missing version', `rules: []\n`, /^policy\.yaml: version: is required/],
    ['missing rules', `version: 1\n`, /^policy\.yaml: rules: is required/],
    ['duplicate YAML key at top level', `version: 1\nrules: []\nversion: 1\n`, /^policy\.yaml: version: duplicate key \(at line 3, column 1\)/],
    ['duplicate YAML key inside a rule', `version: 1\nrules:${VALID_RULE}    scopes: ["*"]\n`, /^policy\.yaml: rules\[0\]\.scopes: duplicate key/],
    ['empty actions', `version: 1\nrules:${VALID_RULE.replace('actions: ["a"]', 'actions: []')}`, 'policy.yaml: rules[0].actions: must not be empty'],
    [
      'empty audiences',
      `version: 1\nrules:${VALID_RULE.replace(`audiences: ["${INVOICES}"]`, 'audiences: []')}`,
      'policy.yaml: rules[0].audiences: must not be empty',
    ],
    ['empty scopes', `version: 1\nrules:${VALID_RULE.replace('scopes: ["s"]', 'scopes: []')}`, 'policy.yaml: rules[0].scopes: must not be empty'],
    [
      'empty spiffe_ids',
      `version: 1\nrules:${VALID_RULE.replace(`spiffe_ids: ["${WORKER}"]`, 'spiffe_ids: []')}`,
      'policy.yaml: rules[0].callers.spiffe_ids: must not be empty',
    ],
    [
      'no callers at all',
      `version: 1\nrules:${VALID_RULE.replace(`{ spiffe_ids: ["${WORKER}"] }`, '{}')}`,
      'policy.yaml: rules[0].callers: needs at least one entry in spiffe_ids or trust_domains',
    ],
    ['missing scopes', `version: 1\nrules:${VALID_RULE.replace('    scopes: ["s"]\n', '')}`, 'policy.yaml: rules[0].scopes: is required'],
    [
      '"*" mixed with actions',
      `version: 1\nrules:${VALID_RULE.replace('actions: ["a"]', 'actions: ["a", "*"]')}`,
      'policy.yaml: rules[0].actions[1]: "*" (any) must be the only entry of the list',
    ],
    [
      'scope with a space',
      `version: 1\nrules:${VALID_RULE.replace('scopes: ["s"]', 'scopes: ["a b"]')}`,
      /^policy\.yaml: rules\[0\]\.scopes\[0\]: "a b" must be non-empty printable ASCII/,
    ],
    ['actions not a list', `version: 1\nrules:${VALID_RULE.replace('actions: ["a"]', 'actions: a')}`, 'policy.yaml: rules[0].actions: must be a list, got "a"'],
    [
      'action not a string',
      `version: 1\nrules:${VALID_RULE.replace('actions: ["a"]', 'actions: [1]')}`,
      'policy.yaml: rules[0].actions[0]: must be a string, got number 1',
    ],
    [
      'require_approval not a boolean',
      `version: 1\nrules:${VALID_RULE}    require_approval: "yes"\n`,
      'policy.yaml: rules[0].require_approval: must be true or false, got "yes"',
    ],
    ['rule not a mapping', `version: 1\nrules:\n  - billing\n`, 'policy.yaml: rules[0]: must be a mapping, got "billing"'],
    ['rules not a list', `version: 1\nrules: {}\n`, 'policy.yaml: rules: must be a list, got a mapping'],
    ['empty document', ``, /^policy\.yaml: the document is empty/],
    ['document not a mapping', `- a\n`, 'policy.yaml: must be a mapping, got a list'],
    ['YAML syntax error', `version: 1\nrules: [\n`, /^policy\.yaml: not valid YAML: .*line 3/],
    ['two YAML documents', `version: 1\nrules: []\n---\nversion: 1\n`, /^policy\.yaml: not valid YAML: Source contains multiple documents/],
    ['unresolved tag', `version: 1\nrules: !allow []\n`, /^policy\.yaml: not valid YAML: Unresolved tag: !allow/],
  ])('refuses %s', (_name, text, expected) => {
    const message = errorOf(text);
    if (typeof expected === 'string') expect(message).toBe(expected);
    else expect(message).toMatch(expected);
  });

  it('PolicyError carries the source and field path separately', () => {
    try {
      parsePolicy(`version: 1\nrules:${VALID_RULE.replace(INVOICES, 'spiffe://example.org/a/**/b')}`, '/etc/task-broker/policy.yaml');
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(PolicyError);
      const e = err as PolicyError;
      expect(e.source).toBe('/etc/task-broker/policy.yaml');
      expect(e.path).toBe('rules[0].audiences[0]');
      expect(e.message).toBe(
        `/etc/task-broker/policy.yaml: rules[0].audiences[0]: spiffe id pattern "spiffe://example.org/a/**/b": '**' is only allowed as the last segment`,
      );
    }
  });

  it('accepts admins: [] and rules: [] (nothing allowed)', () => {
    const policy = parsePolicy('version: 1\nadmins: []\nrules: []\n', 'p');
    expect(policy.admins).toHaveLength(0);
    expect(policy.decide(request()).allowed).toBe(false);
  });
});

describe('parseDurationSeconds', () => {
  it.each<[unknown, number]>([
    ['90s', 90],
    ['5m', 300],
    ['1h', 3600],
    ['7d', 604_800],
    ['300', 300],
    [300, 300],
  ])('%j is %d seconds', (input, seconds) => {
    expect(parseDurationSeconds(input)).toBe(seconds);
  });

  it.each<[unknown]>([['1.5h'], ['5 m'], ['-5s'], ['1500ms'], ['m'], [''], [1.5], [-1], [0], [true], [null]])('refuses %j', (input) => {
    expect(() => parseDurationSeconds(input)).toThrow(/duration must/);
  });
});
