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
    expect(policy.rules.map((r) => r.name)).toEqual(['billing-export', 'partner-reports', 'agent-reports', 'mcp-reports', 'ci-staging']);
    expect(policy.subjectIssuers.map((i) => i.issuer)).toEqual(['https://login.example.org']);
    expect(policy.rules[2]).toMatchObject({ bindSession: true, requireApproval: true, delegation: { maxDepth: 2, readChildren: true } });
    expect(expectAllowed(policy.decide(request())).rule).toBe('billing-export');
  });
});

describe('validation', () => {
  it.each<[string, string, RegExp | string]>([
    ['unknown top-level key', `version: 1\nrule: []\nrules: []\n`, 'policy.yaml: rule: unknown key (expected one of: version, admins, subject_issuers, rules)'],
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
      'policy.yaml: rules[0].require_approval: must be true, false or {approvers: …}, got "yes"',
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

// ---------------------------------------------------------------------------------------------
// The principal behind a task (issue 12): subject_issuers, principals, bind_session, approvers.

const IDP = 'https://idp.example.com';
const OTHER_IDP = 'https://login.partner.test';

const ISSUERS = `subject_issuers:
  - issuer: ${IDP}
    jwks_file: /etc/task-broker/idp-jwks.json
    audiences: ["task-broker"]
  - issuer: ${OTHER_IDP}
    jwks_url: https://login.partner.test/.well-known/jwks.json
    audiences: ["task-broker", "broker.partner.test"]
    algorithms: ["ES256", "RS256"]
    max_age: 1h
    required_claims: ["sid", "email"]
`;

/** A policy with ISSUERS (or `issuers`) and one rule `finance-export` with `extra` lines appended. */
function principalPolicy(extra: string, issuers = ISSUERS): Policy {
  return parsePolicy(
    `version: 1
${issuers}rules:
  - name: finance-export
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read"]
${extra}`,
    'policy.yaml',
  );
}

function principal(claims: Record<string, unknown> = {}, iss = IDP): NonNullable<PolicyRequest['principal']> {
  return { iss, sub: 'alice', sid: 's-1', claims: { iss, sub: 'alice', sid: 's-1', ...claims } };
}

describe('subject_issuers', () => {
  it('reads every key, with the defaults', () => {
    const [idp, partner] = principalPolicy('').subjectIssuers;
    expect(idp).toEqual({
      issuer: IDP,
      jwksFile: '/etc/task-broker/idp-jwks.json',
      audiences: ['task-broker'],
      algorithms: ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'],
      requiredClaims: [],
    });
    expect(partner).toEqual({
      issuer: OTHER_IDP,
      jwksUrl: new URL('https://login.partner.test/.well-known/jwks.json'),
      audiences: ['task-broker', 'broker.partner.test'],
      algorithms: ['ES256', 'RS256'],
      maxAgeSeconds: 3600,
      requiredClaims: ['sid', 'email'],
    });
  });

  it('is empty when absent, and allows http to this machine only', () => {
    expect(parsePolicy('version: 1\nrules: []\n', 'p').subjectIssuers).toEqual([]);
    for (const host of ['127.0.0.1:8080', 'localhost', '[::1]:9000']) {
      const policy = parsePolicy(`version: 1\nsubject_issuers:\n  - {issuer: x, jwks_url: "http://${host}/jwks", audiences: [b]}\nrules: []\n`, 'p');
      expect(policy.subjectIssuers[0]?.jwksUrl?.protocol).toBe('http:');
    }
  });

  const issuer = (fields: string) => `version: 1\nsubject_issuers:\n  - ${fields}\nrules: []\n`;
  it.each<[string, string, string | RegExp]>([
    ['subject_issuers not a list', 'version: 1\nsubject_issuers: {}\nrules: []\n', 'policy.yaml: subject_issuers: must be a list, got a mapping'],
    [
      'an unknown key',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], max_ag: 1h}'),
      /^policy\.yaml: subject_issuers\[0\]\.max_ag: unknown key \(expected one of: issuer, jwks_file/,
    ],
    ['a missing issuer', issuer('{jwks_file: /k.json, audiences: [b]}'), 'policy.yaml: subject_issuers[0].issuer: is required'],
    [
      'an issuer that is not a string',
      issuer('{issuer: 1, jwks_file: /k.json, audiences: [b]}'),
      'policy.yaml: subject_issuers[0].issuer: must be a string, got number 1',
    ],
    ['missing audiences', issuer('{issuer: a, jwks_file: /k.json}'), 'policy.yaml: subject_issuers[0].audiences: is required'],
    ['empty audiences', issuer('{issuer: a, jwks_file: /k.json, audiences: []}'), 'policy.yaml: subject_issuers[0].audiences: must not be empty'],
    [
      '"*" as an audience',
      issuer('{issuer: a, jwks_file: /k.json, audiences: ["*"]}'),
      /^policy\.yaml: subject_issuers\[0\]\.audiences\[0\]: name the audiences/,
    ],
    [
      'neither jwks_file nor jwks_url',
      issuer('{issuer: a, audiences: [b]}'),
      /^policy\.yaml: subject_issuers\[0\]: needs exactly one of jwks_file and jwks_url/,
    ],
    [
      'both jwks_file and jwks_url',
      issuer('{issuer: a, jwks_file: /k.json, jwks_url: "https://a/jwks", audiences: [b]}'),
      /^policy\.yaml: subject_issuers\[0\]: needs exactly one of jwks_file and jwks_url/,
    ],
    [
      'a relative jwks_file',
      issuer('{issuer: a, jwks_file: keys.json, audiences: [b]}'),
      'policy.yaml: subject_issuers[0].jwks_file: "keys.json" must be an absolute path',
    ],
    [
      'jwks_url over http to another host',
      issuer('{issuer: a, jwks_url: "http://idp.example.com/jwks", audiences: [b]}'),
      /^policy\.yaml: subject_issuers\[0\]\.jwks_url: "http:\/\/idp\.example\.com\/jwks": http is only allowed for 127\.0\.0\.1, localhost or ::1/,
    ],
    [
      'jwks_url of another scheme',
      issuer('{issuer: a, jwks_url: "file:///etc/jwks", audiences: [b]}'),
      'policy.yaml: subject_issuers[0].jwks_url: "file:///etc/jwks" must be an https URL',
    ],
    [
      'jwks_url that is not a URL',
      issuer('{issuer: a, jwks_url: "idp/jwks", audiences: [b]}'),
      'policy.yaml: subject_issuers[0].jwks_url: "idp/jwks" is not a URL',
    ],
    [
      'jwks_url with credentials',
      issuer('{issuer: a, jwks_url: "https://u:p@idp.test/jwks", audiences: [b]}'),
      'policy.yaml: subject_issuers[0].jwks_url: "idp.test": credentials in the URL are not allowed',
    ],
    [
      'algorithms: [none]',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], algorithms: [none]}'),
      'policy.yaml: subject_issuers[0].algorithms[0]: "none" is refused: an unsigned token proves nothing',
    ],
    [
      'algorithms: [HS256]',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], algorithms: [ES256, HS256]}'),
      /^policy\.yaml: subject_issuers\[0\]\.algorithms\[1\]: "HS256" is refused: a shared-secret \(HMAC\) algorithm/,
    ],
    [
      'an unknown algorithm',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], algorithms: [ES257]}'),
      /^policy\.yaml: subject_issuers\[0\]\.algorithms\[0\]: "ES257" is not a supported signature algorithm/,
    ],
    [
      'empty algorithms',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], algorithms: []}'),
      'policy.yaml: subject_issuers[0].algorithms: must not be empty',
    ],
    [
      'a repeated algorithm',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], algorithms: [ES256, ES256]}'),
      'policy.yaml: subject_issuers[0].algorithms[1]: "ES256" is listed twice',
    ],
    [
      'a bad max_age',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], max_age: an hour}'),
      /^policy\.yaml: subject_issuers\[0\]\.max_age: duration must be whole seconds/,
    ],
    [
      'required_claims not a list',
      issuer('{issuer: a, jwks_file: /k.json, audiences: [b], required_claims: sid}'),
      'policy.yaml: subject_issuers[0].required_claims: must be a list, got "sid"',
    ],
    [
      'a duplicate issuer',
      'version: 1\nsubject_issuers:\n  - {issuer: a, jwks_file: /k.json, audiences: [b]}\n  - {issuer: a, jwks_file: /j.json, audiences: [c]}\nrules: []\n',
      'policy.yaml: subject_issuers[1].issuer: duplicate issuer "a" (also subject_issuers[0])',
    ],
  ])('refuses %s', (_name, text, expected) => {
    const message = errorOf(text);
    if (typeof expected === 'string') expect(message).toBe(expected);
    else expect(message).toMatch(expected);
  });
});

describe('rules: principals, bind_session, require_approval {approvers}', () => {
  it('reads principals, bind_session and approvers', () => {
    const policy = principalPolicy(`    principals:
      issuers: ["${IDP}"]
      claims: {groups: finance, level: 3, staff: true}
    bind_session: true
    require_approval: {approvers: {issuers: ["${OTHER_IDP}"], claims: {groups: approvers}}}
`);
    const rule = policy.rules[0];
    expect(rule?.principals).toEqual({ issuers: [IDP], claims: { groups: 'finance', level: 3, staff: true } });
    expect(rule?.bindSession).toBe(true);
    expect(rule?.requireApproval).toBe(true);
    expect(rule?.approvers).toEqual({ issuers: [OTHER_IDP], claims: { groups: 'approvers' } });
  });

  it('defaults: no principals, bind_session false, no approvers (also for require_approval: true)', () => {
    const rule = principalPolicy('    require_approval: true\n').rules[0];
    expect(rule?.principals).toBeUndefined();
    expect(rule?.bindSession).toBe(false);
    expect(rule?.requireApproval).toBe(true);
    expect(rule?.approvers).toBeUndefined();
    expect(principalPolicy(`    principals: {issuers: ["${IDP}"]}\n`).rules[0]?.principals).toEqual({ issuers: [IDP], claims: {} });
  });

  it.each<[string, string, string | RegExp]>([
    ['principals not a mapping', '    principals: yes\n', 'policy.yaml: rules[0].principals: must be a mapping, got "yes"'],
    [
      'an unknown key in principals',
      `    principals: {issuers: ["${IDP}"], claim: {a: b}}\n`,
      /^policy\.yaml: rules\[0\]\.principals\.claim: unknown key \(expected one of: issuers, claims\)/,
    ],
    ['principals without issuers', '    principals: {claims: {a: b}}\n', 'policy.yaml: rules[0].principals.issuers: is required'],
    ['empty principals.issuers', '    principals: {issuers: []}\n', 'policy.yaml: rules[0].principals.issuers: must not be empty'],
    [
      'principals.issuers not in subject_issuers',
      '    principals: {issuers: ["https://evil.test"]}\n',
      `policy.yaml: rules[0].principals.issuers[0]: "https://evil.test" is not one of subject_issuers (${IDP}, ${OTHER_IDP})`,
    ],
    [
      'a claim value that is a list',
      `    principals: {issuers: ["${IDP}"], claims: {groups: [a, b]}}\n`,
      'policy.yaml: rules[0].principals.claims.groups: must be a string, number or boolean, got a list',
    ],
    [
      'a claim value that is empty',
      `    principals: {issuers: ["${IDP}"], claims: {groups: }}\n`,
      'policy.yaml: rules[0].principals.claims.groups: must be a string, number or boolean, got nothing',
    ],
    [
      'claims not a mapping',
      `    principals: {issuers: ["${IDP}"], claims: [groups]}\n`,
      'policy.yaml: rules[0].principals.claims: must be a mapping, got a list',
    ],
    [
      'bind_session not a boolean',
      `    principals: {issuers: ["${IDP}"]}\n    bind_session: "true"\n`,
      'policy.yaml: rules[0].bind_session: must be true or false, got "true"',
    ],
    ['bind_session without principals', '    bind_session: true\n', /^policy\.yaml: rules\[0\]\.bind_session: needs principals/],
    ['require_approval as a list', '    require_approval: [a]\n', 'policy.yaml: rules[0].require_approval: must be true, false or {approvers: …}, got a list'],
    ['require_approval without approvers', '    require_approval: {}\n', /^policy\.yaml: rules\[0\]\.require_approval\.approvers: is required/],
    [
      'an unknown key in require_approval',
      `    require_approval: {approver: {issuers: ["${IDP}"]}}\n`,
      /^policy\.yaml: rules\[0\]\.require_approval\.approver: unknown key \(expected one of: approvers\)/,
    ],
    [
      'approvers of an unknown issuer',
      '    require_approval: {approvers: {issuers: ["https://evil.test"]}}\n',
      /^policy\.yaml: rules\[0\]\.require_approval\.approvers\.issuers\[0\]: "https:\/\/evil\.test" is not one of subject_issuers/,
    ],
  ])('refuses %s', (_name, extra, expected) => {
    const message = errorOf(
      `version: 1\n${ISSUERS}rules:\n  - name: finance-export\n    callers: { spiffe_ids: ["${WORKER}"] }\n    actions: ["invoice.export"]\n    audiences: ["${INVOICES}"]\n    scopes: ["invoices:read"]\n${extra}`,
    );
    if (typeof expected === 'string') expect(message).toBe(expected);
    else expect(message).toMatch(expected);
  });

  it('refuses principals when the policy has no subject_issuers, and says so', () => {
    expect(() => principalPolicy(`    principals: {issuers: ["${IDP}"]}\n`, '')).toThrow(
      `policy.yaml: rules[0].principals.issuers[0]: "${IDP}" is not one of subject_issuers (the policy has none)`,
    );
  });
});

describe('Policy.decide with principals', () => {
  const policy = principalPolicy(`    principals:
      issuers: ["${IDP}"]
      claims: {groups: finance, level: 3}
    bind_session: true
    require_approval: {approvers: {issuers: ["${IDP}"], claims: {groups: approvers}}}
`);

  it('allows a matching principal and returns bind_session and the approvers', () => {
    const decision = expectAllowed(policy.decide(request({ principal: principal({ groups: 'finance', level: 3 }) })));
    expect(decision).toEqual({
      allowed: true,
      rule: 'finance-export',
      requireApproval: true,
      approvers: { issuers: [IDP], claims: { groups: 'approvers' } },
      readChildren: false,
      bindSession: true,
      resultRetentionSeconds: 3600,
      policyDigest: policy.digest,
    });
  });

  it('lets an array claim match when it contains the value', () => {
    expectAllowed(policy.decide(request({ principal: principal({ groups: ['staff', 'finance'], level: 3 }) })));
    expect(expectDenied(policy.decide(request({ principal: principal({ groups: ['staff'], level: 3 }) })))).toBe(
      'rule "finance-export": principal claim "groups" does not contain "finance"',
    );
  });

  it('denies a request without a principal', () => {
    expect(expectDenied(policy.decide(request()))).toBe(`rule "finance-export": requires a principal from ${IDP}`);
  });

  it('denies a principal of another issuer', () => {
    expect(expectDenied(policy.decide(request({ principal: principal({ groups: 'finance', level: 3 }, OTHER_IDP) })))).toBe(
      `rule "finance-export": requires a principal from ${IDP}, not from "${OTHER_IDP}"`,
    );
  });

  it('denies a claim that differs, is missing, or has another type', () => {
    expect(expectDenied(policy.decide(request({ principal: principal({ groups: 'sales', level: 3 }) })))).toBe(
      'rule "finance-export": principal claim "groups" is not "finance"',
    );
    expect(expectDenied(policy.decide(request({ principal: principal({ level: 3 }) })))).toBe(
      'rule "finance-export": principal has no "groups" claim (required: "finance")',
    );
    // "3" is not 3: the IdP's claim types are part of what the rule asks for.
    expect(expectDenied(policy.decide(request({ principal: principal({ groups: 'finance', level: '3' }) })))).toBe(
      'rule "finance-export": principal claim "level" is not 3',
    );
  });

  it('does not take an inherited property for a claim', () => {
    const tricky = principalPolicy(`    principals: {issuers: ["${IDP}"], claims: {constructor: x}}\n`);
    expect(expectDenied(tricky.decide(request({ principal: principal() })))).toBe(
      'rule "finance-export": principal has no "constructor" claim (required: "x")',
    );
  });

  it('with bind_session, denies a principal without a session (sid)', () => {
    const noSid = { iss: IDP, sub: 'alice', claims: { iss: IDP, sub: 'alice', groups: 'finance', level: 3 } };
    expect(expectDenied(policy.decide(request({ principal: noSid })))).toBe(
      'rule "finance-export": bind_session needs a principal with a "sid" (session) claim',
    );
  });

  it('checks the older conditions first, then the principal', () => {
    expect(expectDenied(policy.decide(request({ action: 'x' })))).toBe('rule "finance-export": action "x" is not allowed');
  });

  it('falls through to a later rule without principals', () => {
    const two = parsePolicy(
      `version: 1
${ISSUERS}rules:
  - name: with-principal
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["*"]
    principals: {issuers: ["${IDP}"]}
  - name: without
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read"]
`,
      'policy.yaml',
    );
    expect(expectAllowed(two.decide(request({ principal: principal() }))).rule).toBe('with-principal');
    expect(expectAllowed(two.decide(request())).rule).toBe('without');
    // A rule without principals applies to a request with one, too.
    expect(expectAllowed(two.decide(request({ principal: principal({}, OTHER_IDP) }))).rule).toBe('without');
  });

  it('decides an old policy (none of the new keys) exactly as before', () => {
    const old = oneRule({ require_approval: 'true', max_token_ttl: '5m' });
    expect(old.subjectIssuers).toEqual([]);
    expect(old.rules[0]).toMatchObject({ bindSession: false, requireApproval: true });
    expect(old.rules[0]?.principals).toBeUndefined();
    expect(old.rules[0]?.delegation).toBeUndefined();
    const expected = {
      allowed: true,
      rule: 'r1',
      requireApproval: true,
      maxTokenTtlSeconds: 300,
      readChildren: false,
      bindSession: false,
      resultRetentionSeconds: 3600,
      policyDigest: old.digest,
    };
    expect(old.decide(request())).toEqual(expected);
    // A principal on the request changes nothing for a rule that does not ask for one.
    expect(old.decide(request({ principal: principal() }))).toEqual(expected);
    expect(expectDenied(old.decide(request({ scopes: ['x'] })))).toBe('rule "r1": scope "x" is not allowed');
  });
});

describe('Policy.approverDecision', () => {
  const policy = parsePolicy(
    `version: 1
${ISSUERS}rules:
  - name: finance-export
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["invoice.export"]
    audiences: ["${INVOICES}"]
    scopes: ["invoices:read"]
    require_approval: {approvers: {issuers: ["${IDP}"], claims: {groups: approvers}}}
  - name: admin-approved
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["*"]
    audiences: ["${INVOICES}"]
    scopes: ["*"]
    require_approval: true
  - name: no-approval
    callers: { spiffe_ids: ["${WORKER}"] }
    actions: ["*"]
    audiences: ["${INVOICES}"]
    scopes: ["*"]
`,
    'policy.yaml',
  );
  const approver = (claims: Record<string, unknown>, iss = IDP) => ({ iss, sub: 'bob', claims });

  it('allows an approver matching the issuer and claims', () => {
    expect(policy.approverDecision('finance-export', approver({ groups: ['staff', 'approvers'] }))).toEqual({ allowed: true, policyDigest: policy.digest });
  });

  it('refuses an approver whose claims or issuer do not match, naming why', () => {
    expect(policy.approverDecision('finance-export', approver({ groups: 'staff' }))).toEqual({
      allowed: false,
      reason: 'approver "bob" may not approve for rule "finance-export": principal claim "groups" is not "approvers"',
      policyDigest: policy.digest,
    });
    expect(policy.approverDecision('finance-export', approver({ groups: 'approvers' }, OTHER_IDP))).toMatchObject({
      allowed: false,
      reason: `approver "bob" may not approve for rule "finance-export": requires a principal from ${IDP}, not from "${OTHER_IDP}"`,
    });
  });

  it('refuses for rules approved by admins, rules without approval, and rules no longer in the policy', () => {
    expect(policy.approverDecision('admin-approved', approver({ groups: 'approvers' }))).toMatchObject({
      allowed: false,
      reason: 'rule "admin-approved" names no approvers (require_approval: true: an admin approves)',
    });
    expect(policy.approverDecision('no-approval', approver({ groups: 'approvers' }))).toMatchObject({
      allowed: false,
      reason: 'rule "no-approval" does not require approval',
    });
    expect(policy.approverDecision('gone', approver({ groups: 'approvers' }))).toMatchObject({
      allowed: false,
      reason: 'rule "gone" is no longer in the policy',
    });
  });
});

describe('gateways and result_retention', () => {
  const text = `
version: 1
rules:
  - name: mcp
    callers: {trust_domains: [example.org]}
    actions: [report.generate]
    audiences: ["spiffe://example.org/mcp"]
    scopes: ["*"]
    gateways: ["spiffe://example.org/mcp", "spiffe://example.org/gw/*"]
    result_retention: 15m
  - name: plain
    callers: {trust_domains: [example.org]}
    actions: [plain]
    audiences: ["spiffe://example.org/mcp"]
    scopes: ["*"]
`;
  const p = parsePolicy(text, 'gateways.yaml');
  const ask = (action: string, gateway?: string) =>
    p.decide({
      caller: SpiffeId.parse('spiffe://example.org/agent'),
      action,
      audience: 'spiffe://example.org/mcp',
      scopes: [],
      ...(gateway ? { gateway: SpiffeId.parse(gateway) } : {}),
    });

  it('lets a listed gateway serve the rule’s tasks, with the rule’s retention', () => {
    expect(ask('report.generate', 'spiffe://example.org/gw/a')).toMatchObject({ allowed: true, rule: 'mcp', resultRetentionSeconds: 900 });
    // A rule that names gateways is only for tasks created through them: the requester cannot go around.
    expect(ask('report.generate')).toMatchObject({
      allowed: false,
      reason: 'rule "mcp": the rule is for tasks created through its gateways, and this one names none; rule "plain": action "report.generate" is not allowed',
    });
  });

  it('refuses a gateway the rule does not list, and any gateway for a rule without gateways (closed)', () => {
    expect(ask('report.generate', 'spiffe://example.org/other')).toMatchObject({
      allowed: false,
      reason: 'rule "mcp": gateway spiffe://example.org/other is not allowed by gateways; rule "plain": action "report.generate" is not allowed',
    });
    expect(ask('plain', 'spiffe://example.org/mcp')).toMatchObject({
      allowed: false,
      reason: expect.stringContaining('rule "plain": gateway spiffe://example.org/mcp is not allowed (the rule names no gateways)') as string,
    });
    expect(ask('plain')).toMatchObject({ allowed: true, resultRetentionSeconds: 3600 });
  });

  it('refuses a malformed gateway pattern or retention, naming the field', () => {
    expect(() => parsePolicy(text.replace('result_retention: 15m', 'result_retention: soon'), 'x.yaml')).toThrow(/rules\[0\]\.result_retention/);
    expect(() => parsePolicy(text.replace('result_retention: 15m', 'result_retention: 91d'), 'x.yaml')).toThrow(/rules\[0\]\.result_retention: at most 90d/);
    expect(() => parsePolicy(text.replace('"spiffe://example.org/gw/*"', '"not a spiffe id"'), 'x.yaml')).toThrow(/rules\[0\]\.gateways\[1\]/);
  });
});
