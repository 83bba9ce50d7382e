/**
 * The access policy: a YAML document of rules, default deny, evaluated on every request.
 *
 * ```yaml
 * version: 1
 * admins: ["spiffe://example.org/ns/platform/sa/admin"]
 * rules:
 *   - name: billing-export
 *     callers:
 *       spiffe_ids: ["spiffe://example.org/ns/prod/sa/worker"]
 *       trust_domains: ["partner.test"]
 *     actions: ["invoice.export"]          # or ["*"]
 *     audiences: ["spiffe://example.org/ns/billing/sa/**"]
 *     scopes: ["invoices:read"]            # or ["*"]
 *     max_task_ttl: 1h
 *     max_token_ttl: 5m
 *     require_approval: false
 * ```
 *
 * This module is what a policy is and how it decides; reading the document (strictly, with the
 * path of any bad field) is in policy-document.ts.
 */
import { createHash } from 'node:crypto';
import { SpiffeId } from '../spiffe/id.js';
import type { SpiffeIdMatcher } from '../spiffe/pattern.js';

/** A policy document that cannot be used; the message starts with the source and the field path. */
export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  constructor(
    /** Where the text came from, e.g. a file path. */
    readonly source: string,
    /** Path of the offending field, e.g. `rules[2].audiences[0]`; empty for the document as a whole. */
    readonly path: string,
    readonly detail: string,
  ) {
    super(path ? `${source}: ${path}: ${detail}` : `${source}: ${detail}`);
  }
}

export interface PolicyRule {
  readonly name: string;
  /** `callers.spiffe_ids` followed by `callers.trust_domains`, in document order. */
  readonly callers: readonly SpiffeIdMatcher[];
  /** Exact action names; `['*']` means any action. */
  readonly actions: readonly string[];
  readonly audiences: readonly SpiffeIdMatcher[];
  /** The scopes a task may ask for; `['*']` means any scope. */
  readonly scopes: readonly string[];
  readonly maxTaskTtlSeconds?: number;
  readonly maxTokenTtlSeconds?: number;
  readonly requireApproval: boolean;
}

export interface PolicyRequest {
  caller: SpiffeId;
  action: string;
  /** The SPIFFE ID of the resource server the tokens are for. */
  audience: string;
  scopes: readonly string[];
  taskTtlSeconds?: number;
}

export type PolicyDecision =
  | { allowed: true; rule: string; requireApproval: boolean; maxTokenTtlSeconds?: number; policyDigest: string }
  | { allowed: false; reason: string; policyDigest: string };

export type AdminDecision = { allowed: true; entry: string; policyDigest: string } | { allowed: false; reason: string; policyDigest: string };

/** In `actions` and `scopes`, alone: any action, any scope. */
export const ANY = '*';

export class Policy {
  /** base64url SHA-256 of the policy text: recorded with each decision to tell which version decided. */
  readonly digest: string;
  /** Where the policy came from (a file path, or a name given to `parsePolicy`). */
  readonly source: string;
  readonly rules: readonly PolicyRule[];
  readonly admins: readonly SpiffeIdMatcher[];

  constructor(init: { text: string; source: string; rules: readonly PolicyRule[]; admins: readonly SpiffeIdMatcher[] }) {
    this.digest = createHash('sha256').update(init.text, 'utf8').digest('base64url');
    this.source = init.source;
    this.rules = init.rules;
    this.admins = init.admins;
  }

  /** The first rule (in document order) that allows the request wins; otherwise denied, with why. */
  decide(request: PolicyRequest): PolicyDecision {
    const policyDigest = this.digest;
    let audience: SpiffeId | undefined;
    try {
      audience = SpiffeId.parse(request.audience);
    } catch {
      audience = undefined;
    }
    const failures: string[] = [];
    for (const rule of this.rules) {
      if (!rule.callers.some((m) => m.matches(request.caller))) continue;
      const failed = firstFailedCondition(rule, request, audience);
      if (failed === undefined) {
        return {
          allowed: true,
          rule: rule.name,
          requireApproval: rule.requireApproval,
          ...(rule.maxTokenTtlSeconds !== undefined ? { maxTokenTtlSeconds: rule.maxTokenTtlSeconds } : {}),
          policyDigest,
        };
      }
      failures.push(`rule "${rule.name}": ${failed}`);
    }
    if (failures.length === 0) {
      const none = this.rules.length === 0 ? ' (the policy has no rules)' : '';
      return { allowed: false, reason: `no rule matches caller ${request.caller.toString()}${none}`, policyDigest };
    }
    return { allowed: false, reason: failures.join('; '), policyDigest };
  }

  /** Whether `caller` may use TaskBrokerAdmin; `entry` is the `admins` entry that matched. */
  adminDecision(caller: SpiffeId): AdminDecision {
    const policyDigest = this.digest;
    const match = this.admins.find((m) => m.matches(caller));
    if (match) return { allowed: true, entry: match.toString(), policyDigest };
    const none = this.admins.length === 0 ? ' (the policy names no admins)' : '';
    return { allowed: false, reason: `caller ${caller.toString()} is not an admin${none}`, policyDigest };
  }
}

function firstFailedCondition(rule: PolicyRule, request: PolicyRequest, audience: SpiffeId | undefined): string | undefined {
  if (!isAny(rule.actions) && !rule.actions.includes(request.action)) {
    return `action ${JSON.stringify(request.action)} is not allowed`;
  }
  if (audience === undefined) return `audience ${JSON.stringify(request.audience)} is not a valid SPIFFE ID`;
  if (!rule.audiences.some((m) => m.matches(audience))) return `audience ${audience.toString()} is not allowed`;
  if (!isAny(rule.scopes)) {
    const missing = [...new Set(request.scopes.filter((s) => !rule.scopes.includes(s)))];
    if (missing.length === 1) return `scope ${JSON.stringify(missing[0])} is not allowed`;
    if (missing.length > 1) return `scopes ${missing.map((s) => JSON.stringify(s)).join(', ')} are not allowed`;
  }
  if (request.taskTtlSeconds !== undefined && rule.maxTaskTtlSeconds !== undefined && request.taskTtlSeconds > rule.maxTaskTtlSeconds) {
    return `task ttl ${request.taskTtlSeconds}s exceeds max_task_ttl ${rule.maxTaskTtlSeconds}s`;
  }
  return undefined;
}

function isAny(list: readonly string[]): boolean {
  return list.length === 1 && list[0] === ANY;
}
