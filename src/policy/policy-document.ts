/**
 * The policy document: YAML text to a Policy, default deny.
 *
 * Parsing is strict on purpose: an unknown key, a wrong type, an empty list or a bad pattern
 * is refused with the path of the field, because a typo that silently widens or narrows
 * access is worse than a broker that refuses to load the file.
 *
 * Apart from policy.ts (what a policy is and how it decides) because reading the document is
 * most of the code and none of the decision: the keys, their types, the duration syntax, and
 * error messages that point at the offending field.
 */
import { isMap, isPair, isScalar, isSeq, parseDocument, type Document } from 'yaml';
import { SpiffeIdError } from '../spiffe/id.js';
import { parseSpiffeIdPattern, SpiffeIdPatternError, trustDomainOf, type SpiffeIdMatcher } from '../spiffe/pattern.js';
import { ANY, Policy, PolicyError, type PolicyRule } from './policy.js';

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
    ctx
      .list(callersRaw.trust_domains, `${callersPath}.trust_domains`)
      .forEach((v, i) => callers.push(ctx.trustDomain(v, `${callersPath}.trust_domains[${i}]`)));
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
