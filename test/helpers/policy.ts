/**
 * Policies for tests: the permissive one lets every workload of a.test and b.test do anything
 * with audiences in those trust domains (so non-policy tests are not about policy), and names
 * one admin.
 */
import type { Policy } from '../../src/policy/policy.js';
import { parsePolicy } from '../../src/policy/policy-document.js';
import { StaticPolicySource, type PolicySource, type PolicySourceStatus } from '../../src/policy/policy-source.js';

export const ADMIN = 'spiffe://a.test/ns/platform/sa/admin';
export const SECOND_ADMIN = 'spiffe://a.test/ns/platform/sa/oncall';

export const PERMISSIVE_POLICY = `
version: 1
admins:
  - ${ADMIN}
  - ${SECOND_ADMIN}
rules:
  - name: everything
    callers:
      trust_domains: [a.test, b.test]
    actions: ["*"]
    audiences: ["spiffe://a.test/**", "spiffe://b.test/**"]
    scopes: ["*"]
    delegation:
      to: ["spiffe://a.test/**", "spiffe://b.test/**"]
      max_depth: 4
      audiences: ["spiffe://a.test/**", "spiffe://b.test/**"]
`;

export function policyOf(yaml: string, source = 'test-policy.yaml'): Policy {
  return parsePolicy(yaml, source);
}

export function permissivePolicySource(): StaticPolicySource {
  return new StaticPolicySource(policyOf(PERMISSIVE_POLICY));
}

/** A policy source a test sets (and changes) as it goes, as a policy file appearing or changing would. */
export class MutablePolicySource implements PolicySource {
  #policy: Policy | undefined;
  readonly #listeners = new Set<(p: Policy) => void>();
  constructor(policy?: Policy) {
    this.#policy = policy;
  }
  current(): Policy | undefined {
    return this.#policy;
  }
  set(policy: Policy): void {
    this.#policy = policy;
    for (const l of this.#listeners) l(policy);
  }
  onChange(listener: (p: Policy) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
  status(): PolicySourceStatus {
    return { reloadFailures: 0 };
  }
  close(): void {}
}
