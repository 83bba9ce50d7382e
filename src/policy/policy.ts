/**
 * The access policy: a YAML document of rules, default deny, evaluated on every request.
 *
 * Parsing is strict on purpose: an unknown key, a wrong type, an empty list or a bad pattern
 * is refused with the path of the field, because a typo that silently widens or narrows
 * access is worse than a broker that refuses to load the file.
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
 */
import { createHash } from 'node:crypto';
import { isMap, isPair, isScalar, isSeq, parseDocument, type Document } from 'yaml';
import { SpiffeId, SpiffeIdError } from '../spiffe/id.js';
import { parseSpiffeIdPattern, SpiffeIdPatternError, trustDomainOf, type SpiffeIdMatcher } from '../spiffe/pattern.js';

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

const ANY = '*';

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

// ---------------------------------------------------------------------------------------------
// Durations

const DURATION_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400 };

/**
 * "90s", "5m", "1h", "7d", or a whole number of seconds ("300" or 300) -> seconds (> 0).
 * Throws an Error with a message fit to follow a field path.
 */
export function parseDurationSeconds(value: unknown): number {
  let seconds: number | undefined;
  if (typeof value === 'number') {
    seconds = Number.isInteger(value) ? value : undefined;
  } else if (typeof value === 'string') {
    const match = /^(\d+)(s|m|h|d)?$/.exec(value);
    if (match) seconds = Number(match[1]) * (DURATION_SECONDS[match[2] ?? 's'] ?? 1);
  }
  if (seconds === undefined || !Number.isSafeInteger(seconds)) {
    throw new Error(`duration must be whole seconds or look like 90s, 5m, 1h or 7d, got ${describe(value)}`);
  }
  if (seconds <= 0) throw new Error(`duration must be positive, got ${describe(value)}`);
  return seconds;
}

// ---------------------------------------------------------------------------------------------
// Parsing

const TOP_KEYS = ['version', 'admins', 'rules'] as const;
const RULE_KEYS = ['name', 'callers', 'actions', 'audiences', 'scopes', 'max_task_ttl', 'max_token_ttl', 'require_approval'] as const;
const CALLER_KEYS = ['spiffe_ids', 'trust_domains'] as const;
const RULE_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const TOKEN_TEXT = /^[\x21-\x7e]+$/; // printable ASCII, no spaces

/**
 * Parses and validates a policy document. `source` names it in error messages (a file path).
 * Throws PolicyError naming the path of the first bad field.
 */
export function parsePolicy(text: string, source: string): Policy {
  const doc = parseDocument(text, { uniqueKeys: true, strict: true, prettyErrors: true });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem) {
    if (problem.code === 'DUPLICATE_KEY') {
      const dup = findDuplicateKey(doc);
      if (dup) throw new PolicyError(source, dup, `duplicate key (${firstLine(problem.message).replace(/^Map keys must be unique /, '')})`);
    }
    throw new PolicyError(source, '', `not valid YAML: ${firstLine(problem.message)}`);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new PolicyError(source, '', `not valid YAML: ${(err as Error).message}`);
  }
  const ctx: Context = new Context(source);
  const top = ctx.object(data, '', TOP_KEYS);
  if (top.version === undefined) ctx.fail('version', 'is required (version: 1)');
  if (top.version !== 1) ctx.fail('version', `must be 1, got ${describe(top.version)}`);
  const admins = top.admins === undefined ? [] : ctx.list(top.admins, 'admins', { allowEmpty: true }).map((v, i) => ctx.pattern(v, `admins[${i}]`));
  if (top.rules === undefined) ctx.fail('rules', 'is required (use rules: [] for a policy that allows nothing)');
  const rules = ctx.list(top.rules, 'rules', { allowEmpty: true }).map((v, i) => parseRule(ctx, v, `rules[${i}]`));
  const seen = new Map<string, number>();
  rules.forEach((rule, i) => {
    const first = seen.get(rule.name);
    if (first !== undefined) ctx.fail(`rules[${i}].name`, `duplicate rule name "${rule.name}" (also rules[${first}])`);
    seen.set(rule.name, i);
  });
  return new Policy({ text, source, rules, admins });
}

function parseRule(ctx: Context, value: unknown, path: string): PolicyRule {
  const raw = ctx.object(value, path, RULE_KEYS);
  for (const key of ['name', 'callers', 'actions', 'audiences', 'scopes'] as const) {
    if (raw[key] === undefined) ctx.fail(`${path}.${key}`, 'is required');
  }
  const name = ctx.string(raw.name, `${path}.name`);
  if (!RULE_NAME.test(name)) {
    ctx.fail(`${path}.name`, `"${name}" must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit`);
  }

  const callersPath = `${path}.callers`;
  const callersRaw = ctx.object(raw.callers, callersPath, CALLER_KEYS);
  const callers: SpiffeIdMatcher[] = [];
  if (callersRaw.spiffe_ids !== undefined) {
    ctx.list(callersRaw.spiffe_ids, `${callersPath}.spiffe_ids`).forEach((v, i) => callers.push(ctx.pattern(v, `${callersPath}.spiffe_ids[${i}]`)));
  }
  if (callersRaw.trust_domains !== undefined) {
    ctx.list(callersRaw.trust_domains, `${callersPath}.trust_domains`).forEach((v, i) => callers.push(ctx.trustDomain(v, `${callersPath}.trust_domains[${i}]`)));
  }
  if (callers.length === 0) ctx.fail(callersPath, 'needs at least one entry in spiffe_ids or trust_domains');

  const actions = ctx.names(raw.actions, `${path}.actions`);
  const audiences = ctx.list(raw.audiences, `${path}.audiences`).map((v, i) => ctx.pattern(v, `${path}.audiences[${i}]`));
  const scopes = ctx.names(raw.scopes, `${path}.scopes`);
  const maxTaskTtlSeconds = raw.max_task_ttl === undefined ? undefined : ctx.duration(raw.max_task_ttl, `${path}.max_task_ttl`);
  const maxTokenTtlSeconds = raw.max_token_ttl === undefined ? undefined : ctx.duration(raw.max_token_ttl, `${path}.max_token_ttl`);
  let requireApproval = false;
  if (raw.require_approval !== undefined) {
    if (typeof raw.require_approval !== 'boolean') ctx.fail(`${path}.require_approval`, `must be true or false, got ${describe(raw.require_approval)}`);
    requireApproval = raw.require_approval;
  }
  return {
    name,
    callers,
    actions,
    audiences,
    scopes,
    ...(maxTaskTtlSeconds !== undefined ? { maxTaskTtlSeconds } : {}),
    ...(maxTokenTtlSeconds !== undefined ? { maxTokenTtlSeconds } : {}),
    requireApproval,
  };
}

class Context {
  constructor(readonly source: string) {}

  fail(path: string, detail: string): never {
    throw new PolicyError(this.source, path, detail);
  }

  object<K extends string>(value: unknown, path: string, keys: readonly K[]): Partial<Record<K, unknown>> {
    const where = path || 'the document';
    if (value === null || value === undefined) this.fail(path, `${where} is empty; expected a mapping`);
    if (typeof value !== 'object' || Array.isArray(value)) this.fail(path, `must be a mapping, got ${describe(value)}`);
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!(keys as readonly string[]).includes(key)) {
        this.fail(path ? `${path}.${key}` : key, `unknown key (expected one of: ${keys.join(', ')})`);
      }
    }
    return record as Partial<Record<K, unknown>>;
  }

  list(value: unknown, path: string, options: { allowEmpty?: boolean } = {}): unknown[] {
    if (!Array.isArray(value)) this.fail(path, `must be a list, got ${describe(value)}`);
    if (value.length === 0 && !options.allowEmpty) this.fail(path, 'must not be empty');
    return value as unknown[];
  }

  string(value: unknown, path: string): string {
    if (typeof value !== 'string') this.fail(path, `must be a string, got ${describe(value)}`);
    return value;
  }

  /** A non-empty list of names without spaces, or exactly `["*"]`. */
  names(value: unknown, path: string): string[] {
    const names = this.list(value, path).map((v, i) => {
      const name = this.string(v, `${path}[${i}]`);
      if (!TOKEN_TEXT.test(name)) this.fail(`${path}[${i}]`, `${JSON.stringify(name)} must be non-empty printable ASCII without spaces`);
      return name;
    });
    const star = names.indexOf(ANY);
    if (star !== -1 && names.length > 1) this.fail(`${path}[${star}]`, `"*" (any) must be the only entry of the list`);
    const dup = names.findIndex((n, i) => names.indexOf(n) !== i);
    if (dup !== -1) this.fail(`${path}[${dup}]`, `${JSON.stringify(names[dup])} is listed twice`);
    return names;
  }

  pattern(value: unknown, path: string): SpiffeIdMatcher {
    const text = this.string(value, path);
    try {
      return parseSpiffeIdPattern(text);
    } catch (err) {
      if (err instanceof SpiffeIdPatternError || err instanceof SpiffeIdError) this.fail(path, err.message);
      throw err;
    }
  }

  trustDomain(value: unknown, path: string): SpiffeIdMatcher {
    const text = this.string(value, path);
    if (text.startsWith('spiffe://')) this.fail(path, `"${text}": write the trust domain name alone, without spiffe://`);
    try {
      return trustDomainOf(text);
    } catch (err) {
      if (err instanceof SpiffeIdPatternError || err instanceof SpiffeIdError) this.fail(path, `trust domain "${text}": ${err.message}`);
      throw err;
    }
  }

  duration(value: unknown, path: string): number {
    try {
      return parseDurationSeconds(value);
    } catch (err) {
      return this.fail(path, (err as Error).message);
    }
  }
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${value}`;
  return typeof value;
}

function firstLine(message: string): string {
  return (message.split('\n')[0] ?? message).replace(/:$/, '');
}

/** The path of the first repeated key in the document, in the notation of PolicyError paths. */
function findDuplicateKey(doc: Document): string | undefined {
  const walk = (node: unknown, path: string): string | undefined => {
    if (isMap(node)) {
      const seen = new Set<string>();
      for (const item of node.items) {
        if (!isPair(item)) continue;
        const key = isScalar(item.key) ? String(item.key.value) : String(item.key);
        const here = path ? `${path}.${key}` : key;
        if (seen.has(key)) return here;
        seen.add(key);
        const inner = walk(item.value, here);
        if (inner) return inner;
      }
    } else if (isSeq(node)) {
      for (const [i, item] of node.items.entries()) {
        const inner = walk(item, `${path}[${i}]`);
        if (inner) return inner;
      }
    }
    return undefined;
  };
  return walk(doc.contents, '');
}
