/**
 * A rule's `delegation` block: how it is read (defaults, strictness, field paths) and what
 * delegationDecision says for each hop, with the reason for each refusal.
 */
import { describe, expect, it } from 'vitest';
import { PolicyError, type DelegationDecision, type DelegationHop, type Policy } from '../../src/policy/policy.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { SpiffeId } from '../../src/spiffe/id.js';

const PLANNER = 'spiffe://example.org/ns/agents/sa/planner';
const WAREHOUSE = 'spiffe://example.org/ns/data/sa/warehouse';
const TOOL = 'spiffe://example.org/ns/tools/sa/sql';

/** The rule of the issue's example; `delegation` replaces its delegation block (YAML lines at 6 spaces, or '' for none). */
function policyWith(delegation: string, scopes = '["reports:read", "reports:write"]'): Policy {
  return parsePolicy(
    `version: 1
rules:
  - name: agent-runs
    callers: {spiffe_ids: ["${PLANNER}"]}
    actions: ["report.build"]
    audiences: ["${WAREHOUSE}"]
    scopes: ${scopes}
${delegation ? `    delegation:\n${delegation}` : ''}`,
    'policy.yaml',
  );
}

const EXAMPLE = `      to: ["spiffe://example.org/ns/tools/**"]
      max_depth: 2
      scopes: ["reports:read"]
      audiences: ["spiffe://example.org/ns/data/**"]
      read_children: false
`;

function hop(overrides: Partial<DelegationHop> = {}): DelegationHop {
  return {
    rule: 'agent-runs',
    delegatee: SpiffeId.parse(TOOL),
    depth: 1,
    scopes: ['reports:read'],
    audience: WAREHOUSE,
    parentAudience: WAREHOUSE,
    ...overrides,
  };
}

function reasonOf(decision: DelegationDecision): string {
  if (decision.allowed) throw new Error('expected a refusal, got allowed');
  return decision.reason;
}

function errorOf(text: string): string {
  try {
    parsePolicy(text, 'policy.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyError);
    return (err as PolicyError).message;
  }
  throw new Error('expected a PolicyError');
}

describe('delegation block: parsing', () => {
  it('reads every key of the example', () => {
    const d = policyWith(EXAMPLE).rules[0]?.delegation;
    expect(d?.to.map(String)).toEqual(['spiffe://example.org/ns/tools/**']);
    expect(d?.maxDepth).toBe(2);
    expect(d?.scopes).toEqual(['reports:read']);
    expect(d?.audiences.map(String)).toEqual(['spiffe://example.org/ns/data/**']);
    expect(d?.readChildren).toBe(false);
  });

  it('defaults: max_depth 0, any of the task scopes, no other audiences, no reading children', () => {
    const d = policyWith(`      to: ["${TOOL}"]\n`).rules[0]?.delegation;
    expect(d).toMatchObject({ maxDepth: 0, scopes: ['*'], readChildren: false });
    expect(d?.audiences).toEqual([]);
  });

  it('is absent when the rule has no block', () => {
    expect(policyWith('').rules[0]?.delegation).toBeUndefined();
  });

  it('allows an empty `to` only with max_depth 0', () => {
    expect(policyWith('      to: []\n').rules[0]?.delegation?.to).toEqual([]);
    expect(errorOf(policyText('      to: []\n      max_depth: 1\n'))).toBe('policy.yaml: rules[0].delegation.to: must not be empty');
  });

  it.each<[string, string, string | RegExp]>([
    [
      'an unknown key',
      `      to: ["${TOOL}"]\n      max_dept: 2\n`,
      /^policy\.yaml: rules\[0\]\.delegation\.max_dept: unknown key \(expected one of: to, max_depth, scopes, audiences, read_children\)$/,
    ],
    ['a missing `to`', '      max_depth: 1\n', 'policy.yaml: rules[0].delegation.to: is required (who may receive delegated sub-tasks)'],
    ['`to` not a list', `      to: "${TOOL}"\n      max_depth: 1\n`, `policy.yaml: rules[0].delegation.to: must be a list, got "${TOOL}"`],
    [
      'a bad `to` pattern',
      '      to: ["spiffe://example.org/ns/tools-*"]\n      max_depth: 1\n',
      /^policy\.yaml: rules\[0\]\.delegation\.to\[0\]: spiffe id pattern .*a wildcard must be a whole segment/,
    ],
    [
      'a negative max_depth',
      `      to: ["${TOOL}"]\n      max_depth: -1\n`,
      'policy.yaml: rules[0].delegation.max_depth: must be a whole number from 0 to 16, got number -1',
    ],
    [
      'max_depth above 16',
      `      to: ["${TOOL}"]\n      max_depth: 17\n`,
      'policy.yaml: rules[0].delegation.max_depth: must be a whole number from 0 to 16, got number 17',
    ],
    [
      'a fractional max_depth',
      `      to: ["${TOOL}"]\n      max_depth: 1.5\n`,
      'policy.yaml: rules[0].delegation.max_depth: must be a whole number from 0 to 16, got number 1.5',
    ],
    [
      'max_depth as a string',
      `      to: ["${TOOL}"]\n      max_depth: "2"\n`,
      'policy.yaml: rules[0].delegation.max_depth: must be a whole number from 0 to 16, got "2"',
    ],
    ['empty scopes', `      to: ["${TOOL}"]\n      scopes: []\n`, 'policy.yaml: rules[0].delegation.scopes: must not be empty'],
    [
      'a scope the rule does not grant',
      `      to: ["${TOOL}"]\n      scopes: ["reports:read", "admin"]\n`,
      'policy.yaml: rules[0].delegation.scopes[1]: "admin" is not one of the rule\'s scopes',
    ],
    [
      '"*" mixed into scopes',
      `      to: ["${TOOL}"]\n      scopes: ["*", "reports:read"]\n`,
      'policy.yaml: rules[0].delegation.scopes[0]: "*" (any) must be the only entry of the list',
    ],
    [
      'a bad audience pattern',
      `      to: ["${TOOL}"]\n      audiences: ["spiffe://*/data"]\n`,
      /^policy\.yaml: rules\[0\]\.delegation\.audiences\[0\]: .*the trust domain cannot contain a wildcard/,
    ],
    [
      'read_children not a boolean',
      `      to: ["${TOOL}"]\n      read_children: "yes"\n`,
      'policy.yaml: rules[0].delegation.read_children: must be true or false, got "yes"',
    ],
  ])('refuses %s', (_name, block, expected) => {
    const message = errorOf(policyText(block));
    if (typeof expected === 'string') expect(message).toBe(expected);
    else expect(message).toMatch(expected);
  });

  it('refuses a block that is not a mapping', () => {
    expect(errorOf(policyText('').replace('    delegation:\n', '    delegation: 2\n'))).toBe(
      'policy.yaml: rules[0].delegation: must be a mapping, got number 2',
    );
  });

  it('accepts any scope to be handed on when the rule grants any scope', () => {
    const policy = policyWith(`      to: ["${TOOL}"]\n      max_depth: 1\n      scopes: ["whatever:scope"]\n`, '["*"]');
    expect(policy.rules[0]?.delegation?.scopes).toEqual(['whatever:scope']);
  });
});

/** The text policyWith would parse (for the refusals). */
function policyText(delegation: string): string {
  return `version: 1
rules:
  - name: agent-runs
    callers: {spiffe_ids: ["${PLANNER}"]}
    actions: ["report.build"]
    audiences: ["${WAREHOUSE}"]
    scopes: ["reports:read", "reports:write"]
    delegation:
${delegation}`;
}

describe('Policy.delegationDecision', () => {
  const policy = policyWith(EXAMPLE);

  it('allows a hop that meets every condition, with the digest and read_children', () => {
    expect(policy.delegationDecision(hop())).toEqual({ allowed: true, policyDigest: policy.digest, readChildren: false });
    expect(policy.delegationDecision(hop({ depth: 2, delegatee: SpiffeId.parse('spiffe://example.org/ns/tools/sa/a/b') })).allowed).toBe(true);
  });

  it('passes read_children: true on', () => {
    const reading = policyWith(EXAMPLE.replace('read_children: false', 'read_children: true'));
    expect(reading.delegationDecision(hop())).toMatchObject({ allowed: true, readChildren: true });
  });

  it('allows no delegation for a rule without a block, or with max_depth 0', () => {
    const none = policyWith('');
    expect(reasonOf(none.delegationDecision(hop()))).toBe('rule "agent-runs" allows no delegation (max_depth 0)');
    const zero = policyWith(`      to: ["spiffe://example.org/ns/tools/**"]\n`);
    expect(reasonOf(zero.delegationDecision(hop()))).toBe('rule "agent-runs" allows no delegation (max_depth 0)');
    expect(none.delegationDecision(hop()).policyDigest).toBe(none.digest);
  });

  it('refuses a hop deeper than max_depth', () => {
    expect(reasonOf(policy.delegationDecision(hop({ depth: 3 })))).toBe('delegation depth 3 exceeds max_depth 2 of rule "agent-runs"');
  });

  it('refuses a depth that is not a delegated hop', () => {
    expect(reasonOf(policy.delegationDecision(hop({ depth: 0 })))).toBe('delegation depth 0 is not a delegated hop (the first is 1)');
    expect(reasonOf(policy.delegationDecision(hop({ depth: 1.5 })))).toMatch(/^delegation depth 1\.5 is not a delegated hop/);
  });

  it('refuses a delegatee that delegation.to does not name', () => {
    const other = 'spiffe://example.org/ns/agents/sa/critic';
    expect(reasonOf(policy.delegationDecision(hop({ delegatee: SpiffeId.parse(other) })))).toBe(
      `delegatee ${other} is not allowed by delegation.to of rule "agent-runs"`,
    );
    // `**` needs at least one segment below the prefix, and the trust domain is literal.
    expect(policy.delegationDecision(hop({ delegatee: SpiffeId.parse('spiffe://example.org/ns/tools') })).allowed).toBe(false);
    expect(policy.delegationDecision(hop({ delegatee: SpiffeId.parse('spiffe://other.org/ns/tools/sa/sql') })).allowed).toBe(false);
  });

  it('refuses a scope delegation.scopes does not hand on', () => {
    expect(reasonOf(policy.delegationDecision(hop({ scopes: ['reports:read', 'reports:write'] })))).toBe(
      'scope "reports:write" may not be handed on (delegation.scopes of rule "agent-runs")',
    );
  });

  it('refuses a scope the rule itself does not grant, even with delegation.scopes "*"', () => {
    const any = policyWith(`      to: ["${TOOL}"]\n      max_depth: 1\n`);
    expect(any.delegationDecision(hop({ scopes: ['reports:write'] })).allowed).toBe(true);
    expect(reasonOf(any.delegationDecision(hop({ scopes: ['admin:all', 'x', 'x'] })))).toBe('scopes "admin:all", "x" are not allowed by rule "agent-runs"');
  });

  it('allows the parent audience always, another one only by delegation.audiences', () => {
    const elsewhere = 'spiffe://example.org/ns/data/sa/lake';
    expect(policy.delegationDecision(hop({ audience: elsewhere })).allowed).toBe(true);
    const outside = 'spiffe://example.org/ns/billing/sa/invoices';
    expect(reasonOf(policy.delegationDecision(hop({ audience: outside })))).toBe(
      `audience ${outside} is neither the parent's nor allowed by delegation.audiences of rule "agent-runs"`,
    );
    // Without delegation.audiences, only the parent's.
    const sameOnly = policyWith(`      to: ["${TOOL}"]\n      max_depth: 1\n`);
    expect(sameOnly.delegationDecision(hop()).allowed).toBe(true);
    expect(reasonOf(sameOnly.delegationDecision(hop({ audience: elsewhere })))).toMatch(/is neither the parent's nor allowed by delegation\.audiences/);
  });

  it('refuses an audience that is not a SPIFFE ID', () => {
    expect(reasonOf(policy.delegationDecision(hop({ audience: 'https://warehouse.example.org' })))).toBe(
      'audience "https://warehouse.example.org" is not a valid SPIFFE ID',
    );
  });

  it('refuses a hop of a rule that is no longer in the policy', () => {
    expect(reasonOf(policy.delegationDecision(hop({ rule: 'x' })))).toBe('rule "x" is no longer in the policy');
  });

  it('names the first failing condition: depth before delegatee before scopes', () => {
    const stranger = SpiffeId.parse('spiffe://example.org/ns/agents/sa/critic');
    expect(reasonOf(policy.delegationDecision(hop({ depth: 3, delegatee: stranger, scopes: ['reports:write'] })))).toMatch(/^delegation depth 3/);
    expect(reasonOf(policy.delegationDecision(hop({ delegatee: stranger, scopes: ['reports:write'] })))).toMatch(/^delegatee /);
  });
});

describe('decide() and delegation', () => {
  it('carries read_children into the allowed decision (false without a block)', () => {
    const request = { caller: SpiffeId.parse(PLANNER), action: 'report.build', audience: WAREHOUSE, scopes: ['reports:read'] };
    expect(policyWith(EXAMPLE.replace('read_children: false', 'read_children: true')).decide(request)).toMatchObject({ allowed: true, readChildren: true });
    expect(policyWith(EXAMPLE).decide(request)).toMatchObject({ allowed: true, readChildren: false });
    expect(policyWith('').decide(request)).toMatchObject({ allowed: true, readChildren: false });
  });
});
