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
 * Two later additions (issue 12), both optional, so a policy without them decides as before:
 *
 *   - a rule's `delegation` block says whether a task it allows may hand sub-tasks on to other
 *     workloads, how deep, which scopes and audiences (`delegationDecision`);
 *   - `subject_issuers` name the identity providers whose tokens say which person (the
 *     principal) a task acts for; a rule's `principals` limits it to tasks of matching
 *     principals, `bind_session` ties the task to the principal's session, and
 *     `require_approval: {approvers: …}` lets matching principals approve instead of an admin.
 *     Verifying those tokens is subject-tokens.ts; this module only compares verified claims.
 *
 * This module is what a policy is and how it decides; reading the document (strictly, with the
 * path of any bad field) is in policy-document.ts.
 */
import { createHash } from 'node:crypto';
import { quoted } from '../errors.js';
import { SpiffeId } from '../spiffe/id.js';
import type { SpiffeIdMatcher } from '../spiffe/pattern.js';

/** Where in the policy text something is: 1-based line and column. */
export interface PolicyPosition {
  readonly line: number;
  readonly column: number;
}

/** A policy document that cannot be used; the message starts with the source and the field path. */
export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  constructor(
    /** Where the text came from, e.g. a file path. */
    readonly source: string,
    /** Path of the offending field, e.g. `rules[2].audiences[0]`; empty for the document as a whole. */
    readonly path: string,
    readonly detail: string,
    /** Where the offending field (or YAML error) is in the text, when the parser knows. */
    readonly position?: PolicyPosition,
    /** `unreadable`: the file could not be read at all, so the fix is its path or permissions, not its text. */
    readonly kind: 'document' | 'unreadable' = 'document',
  ) {
    super(path ? `${source}: ${path}: ${detail}` : `${source}: ${detail}`);
  }

  /** The policy file `source` could not be read (`cause`: what reading it threw). */
  static unreadable(source: string, cause: unknown): PolicyError {
    return new PolicyError(source, '', `cannot read the policy file: ${(cause as Error).message}`, undefined, 'unreadable');
  }

  /**
   * The problem for a person: `policy FILE line L, column C: PATH: DETAIL` (without the line
   * when it is not known). Callers add what to do (e.g. ": fix the file").
   */
  get located(): string {
    const where = this.position ? ` line ${this.position.line}, column ${this.position.column}` : '';
    // The YAML parser's own "at line L, column C" says again what the start of the line says.
    const detail = this.position ? this.detail.replace(/\s*\(at line \d+, column \d+\)$|\s+at line \d+, column \d+$/, '') : this.detail;
    return `policy ${this.source}${where}: ${this.path ? `${this.path}: ` : ''}${detail}`;
  }
}

/** The person (or other subject) a task acts for: from a verified subject token. */
export interface Principal {
  iss: string;
  sub: string;
  /** The IdP's session ID, when the token carries a string `sid`: what `bind_session` binds to. */
  sid?: string;
}

/** One identity provider whose subject tokens the broker accepts (`subject_issuers[]`). */
export interface SubjectIssuer {
  /** The exact `iss` value of its tokens. */
  issuer: string;
  /** Exactly one of jwksFile / jwksUrl is set. */
  jwksFile?: string;
  jwksUrl?: URL;
  /** Accepted `aud` values: a token's `aud` must contain one of them. */
  audiences: string[];
  /** Signature algorithms accepted from this issuer (never `none`, never a shared-secret HS*). */
  algorithms: string[];
  /** When set, a token's `iat` must be at most this old (and the token must have one). */
  maxAgeSeconds?: number;
  /** Claim names every token of this issuer must carry. */
  requiredClaims: string[];
}

/** Which principals a rule applies to, or may approve its tasks: `issuers` and `claims` both must match. */
export interface PrincipalMatcher {
  /** `iss` values; each is one of the policy's subject_issuers. */
  issuers: string[];
  /** Each claim must equal the value or, when the claim is an array, contain it. */
  claims: Record<string, ClaimValue>;
}

export type ClaimValue = string | number | boolean;

/** A rule's `delegation` block: whether and how a task it allows may delegate sub-tasks. */
export interface DelegationRule {
  /** Who may receive a delegated sub-task (a child task's owner). */
  readonly to: readonly SpiffeIdMatcher[];
  /** How many hops below the root task; 0 means no delegation. */
  readonly maxDepth: number;
  /** Scopes that may be handed on; `['*']` means any of the task's. */
  readonly scopes: readonly string[];
  /** Audiences a delegated task may have other than its parent's; empty: the parent's only. */
  readonly audiences: readonly SpiffeIdMatcher[];
  /** Whether a delegator may read (GetTask) the tasks delegated below it. */
  readonly readChildren: boolean;
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
  /** True for `require_approval: true` and for the `{approvers: …}` form. */
  readonly requireApproval: boolean;
  /** Only for `require_approval: {approvers: …}`: principals who may approve (instead of an admin). */
  readonly approvers?: PrincipalMatcher;
  /** Absent: the rule's tasks cannot delegate (max depth 0). */
  readonly delegation?: DelegationRule;
  /** Absent: the rule applies whatever principal the task has, or none. */
  readonly principals?: PrincipalMatcher;
  /** Follow-up requests must present a subject token of the task's principal's `sub` and `sid`. */
  readonly bindSession: boolean;
  /**
   * Workloads (e.g. MCP servers) that may create this rule's tasks for a requester and serve them
   * (CreateTask on_behalf_of); empty: none, a task must be created by its owner itself. A rule
   * that names gateways allows only tasks created through one of them.
   */
  readonly gateways: readonly SpiffeIdMatcher[];
  /** How long a task's stored result (CompleteTask result) is handed out after the task ends. */
  readonly resultRetentionSeconds: number;
}

export interface PolicyRequest {
  caller: SpiffeId;
  action: string;
  /** The SPIFFE ID of the resource server the tokens are for. */
  audience: string;
  scopes: readonly string[];
  taskTtlSeconds?: number;
  /** The principal behind the task, from a verified subject token; `claims` is that token's payload. */
  principal?: Principal & { claims: Record<string, unknown> };
  /** The gateway that created (or serves) the task for its requester; the rule's gateways must allow it. */
  gateway?: SpiffeId;
}

export type PolicyDecision =
  | {
      allowed: true;
      rule: string;
      requireApproval: boolean;
      /** Set when principals (not admins) approve: who may. */
      approvers?: PrincipalMatcher;
      maxTokenTtlSeconds?: number;
      /** Whether a delegator may read the tasks delegated below it (the rule's delegation.read_children). */
      readChildren: boolean;
      /** Whether follow-ups must present a subject token of the same `sub` and `sid`. */
      bindSession: boolean;
      /** How long a stored result is handed out after the task ends (the rule's result_retention). */
      resultRetentionSeconds: number;
      policyDigest: string;
    }
  | { allowed: false; reason: string; policyDigest: string };

export type AdminDecision = { allowed: true; entry: string; policyDigest: string } | { allowed: false; reason: string; policyDigest: string };

/** One hop of a delegation chain: a parent task handing a sub-task (the child) to `delegatee`. */
export interface DelegationHop {
  /** The rule that allows the root task of the tree (the caller re-decides the root at request time). */
  rule: string;
  /** The workload that will own the child task. */
  delegatee: SpiffeId;
  /** The child's depth: 1 for a direct child of a root task. */
  depth: number;
  /** The child's scopes; that they are a subset of the parent's is the caller's check. */
  scopes: readonly string[];
  /** The child's audience. */
  audience: string;
  parentAudience: string;
}

export type DelegationDecision = { allowed: true; policyDigest: string; readChildren: boolean } | { allowed: false; reason: string; policyDigest: string };

export type ApproverDecision = { allowed: true; policyDigest: string } | { allowed: false; reason: string; policyDigest: string };

/** In `actions` and `scopes`, alone: any action, any scope. */
export const ANY = '*';

export class Policy {
  /** base64url SHA-256 of the policy text: recorded with each decision to tell which version decided. */
  readonly digest: string;
  /** Where the policy came from (a file path, or a name given to `parsePolicy`). */
  readonly source: string;
  readonly rules: readonly PolicyRule[];
  readonly admins: readonly SpiffeIdMatcher[];
  /** The identity providers whose subject tokens name a task's principal; empty: none accepted. */
  readonly subjectIssuers: readonly SubjectIssuer[];

  constructor(init: {
    text: string;
    source: string;
    rules: readonly PolicyRule[];
    admins: readonly SpiffeIdMatcher[];
    subjectIssuers?: readonly SubjectIssuer[];
  }) {
    this.digest = createHash('sha256').update(init.text, 'utf8').digest('base64url');
    this.source = init.source;
    this.rules = init.rules;
    this.admins = init.admins;
    this.subjectIssuers = init.subjectIssuers ?? [];
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
          ...(rule.approvers !== undefined ? { approvers: rule.approvers } : {}),
          ...(rule.maxTokenTtlSeconds !== undefined ? { maxTokenTtlSeconds: rule.maxTokenTtlSeconds } : {}),
          readChildren: rule.delegation?.readChildren ?? false,
          bindSession: rule.bindSession,
          resultRetentionSeconds: rule.resultRetentionSeconds,
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

  /**
   * Whether the rule named `hop.rule` lets this hop be delegated. The rule is looked up by name
   * in this (the current) policy, so a rule removed or narrowed since the tree began stops
   * further delegation at once. Checks, in order: the rule exists and delegates at all, the
   * depth, the delegatee, the scopes handed on, the audience.
   */
  delegationDecision(hop: DelegationHop): DelegationDecision {
    const policyDigest = this.digest;
    const deny = (reason: string): DelegationDecision => ({ allowed: false, reason, policyDigest });
    const rule = this.rules.find((r) => r.name === hop.rule);
    if (!rule) return deny(`rule ${JSON.stringify(hop.rule)} is no longer in the policy`);
    const name = JSON.stringify(rule.name);
    const delegation = rule.delegation;
    if (!delegation || delegation.maxDepth === 0) return deny(`rule ${name} allows no delegation (max_depth 0)`);
    if (!Number.isInteger(hop.depth) || hop.depth < 1) return deny(`delegation depth ${hop.depth} is not a delegated hop (the first is 1)`);
    if (hop.depth > delegation.maxDepth) return deny(`delegation depth ${hop.depth} exceeds max_depth ${delegation.maxDepth} of rule ${name}`);
    if (!delegation.to.some((m) => m.matches(hop.delegatee))) {
      return deny(`delegatee ${hop.delegatee.toString()} is not allowed by delegation.to of rule ${name}`);
    }
    // The rule's own scopes bound every task of the tree; delegation.scopes narrows what may
    // travel further down. A child scope outside either is refused, each with its own field.
    const outsideRule = isAny(rule.scopes) ? [] : unique(hop.scopes.filter((s) => !rule.scopes.includes(s)));
    if (outsideRule.length > 0) return deny(`${scopeList(outsideRule)} ${outsideRule.length === 1 ? 'is' : 'are'} not allowed by rule ${name}`);
    const notHandedOn = isAny(delegation.scopes) ? [] : unique(hop.scopes.filter((s) => !delegation.scopes.includes(s)));
    if (notHandedOn.length > 0) return deny(`${scopeList(notHandedOn)} may not be handed on (delegation.scopes of rule ${name})`);
    if (hop.audience !== hop.parentAudience) {
      let audience: SpiffeId;
      try {
        audience = SpiffeId.parse(hop.audience);
      } catch {
        return deny(`audience ${quoted(hop.audience, 128)} is not a valid SPIFFE ID`);
      }
      if (!delegation.audiences.some((m) => m.matches(audience))) {
        return deny(`audience ${audience.toString()} is neither the parent's nor allowed by delegation.audiences of rule ${name}`);
      }
    }
    return { allowed: true, policyDigest, readChildren: delegation.readChildren };
  }

  /**
   * Whether `approver` (a verified subject token's principal and claims) may approve a task
   * allowed by the rule named `rule`: only for `require_approval: {approvers: …}`, and only a
   * principal matching its issuers and claims. The `true` form is for admins (adminDecision).
   */
  approverDecision(rule: string, approver: { iss: string; sub: string; claims: Record<string, unknown> }): ApproverDecision {
    const policyDigest = this.digest;
    const found = this.rules.find((r) => r.name === rule);
    if (!found) return { allowed: false, reason: `rule ${JSON.stringify(rule)} is no longer in the policy`, policyDigest };
    const name = JSON.stringify(found.name);
    if (!found.requireApproval) return { allowed: false, reason: `rule ${name} does not require approval`, policyDigest };
    if (!found.approvers) {
      return { allowed: false, reason: `rule ${name} names no approvers (require_approval: true: an admin approves)`, policyDigest };
    }
    const mismatch = principalMismatch(found.approvers, approver);
    if (mismatch !== undefined)
      return { allowed: false, reason: `approver ${quoted(approver.sub, 128)} may not approve for rule ${name}: ${mismatch}`, policyDigest };
    return { allowed: true, policyDigest };
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
  // A rule that names gateways is for the tasks they create and serve: a requester cannot go around them.
  if (request.gateway === undefined && rule.gateways.length > 0) return 'the rule is for tasks created through its gateways, and this one names none';
  if (request.gateway !== undefined && !rule.gateways.some((m) => m.matches(request.gateway!))) {
    return rule.gateways.length === 0
      ? `gateway ${request.gateway.toString()} is not allowed (the rule names no gateways)`
      : `gateway ${request.gateway.toString()} is not allowed by gateways`;
  }
  if (rule.principals) {
    // Last, so a request that fails an older condition is told about that one, as before.
    if (!request.principal) return `requires a principal from ${rule.principals.issuers.join(' or ')}`;
    const mismatch = principalMismatch(rule.principals, request.principal);
    if (mismatch !== undefined) return mismatch;
  }
  // Binding to a session needs a session: without a sid, "the same session" would mean "any
  // token of the same person", which is not what the rule's author asked for.
  if (rule.bindSession && request.principal && request.principal.sid === undefined) {
    return 'bind_session needs a principal with a "sid" (session) claim';
  }
  return undefined;
}

/** Why `principal` does not match `matcher` (issuer first, then each claim in order), or undefined. */
function principalMismatch(matcher: PrincipalMatcher, principal: { iss: string; claims: Record<string, unknown> }): string | undefined {
  if (!matcher.issuers.includes(principal.iss)) {
    return `requires a principal from ${matcher.issuers.join(' or ')}, not from ${quoted(principal.iss, 128)}`;
  }
  for (const [claim, want] of Object.entries(matcher.claims)) {
    const have = Object.hasOwn(principal.claims, claim) ? principal.claims[claim] : undefined;
    if (have === undefined) return `principal has no ${JSON.stringify(claim)} claim (required: ${JSON.stringify(want)})`;
    // Strict equality: "1" is not 1 and "true" is not true; an IdP's types are part of its claims.
    if (Array.isArray(have)) {
      if (!have.includes(want)) return `principal claim ${JSON.stringify(claim)} does not contain ${JSON.stringify(want)}`;
    } else if (have !== want) {
      return `principal claim ${JSON.stringify(claim)} is not ${JSON.stringify(want)}`;
    }
  }
  return undefined;
}

function unique(list: readonly string[]): string[] {
  return [...new Set(list)];
}

function scopeList(scopes: readonly string[]): string {
  return scopes.length === 1 ? `scope ${JSON.stringify(scopes[0])}` : `scopes ${scopes.map((s) => JSON.stringify(s)).join(', ')}`;
}

function isAny(list: readonly string[]): boolean {
  return list.length === 1 && list[0] === ANY;
}
