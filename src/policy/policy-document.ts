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
import { isAbsolute } from 'node:path';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { SpiffeIdError } from '../spiffe/id.js';
import { parseSpiffeIdPattern, SpiffeIdPatternError, trustDomainOf, type SpiffeIdMatcher } from '../spiffe/pattern.js';
import {
  ANY,
  Policy,
  PolicyError,
  type ClaimValue,
  type DelegationRule,
  type PolicyPosition,
  type PolicyRule,
  type PrincipalMatcher,
  type SubjectIssuer,
} from './policy.js';

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

const TOP_KEYS = ['version', 'admins', 'subject_issuers', 'rules'] as const;
const RULE_KEYS = [
  'name',
  'callers',
  'actions',
  'audiences',
  'scopes',
  'max_task_ttl',
  'max_token_ttl',
  'require_approval',
  'delegation',
  'principals',
  'bind_session',
  'gateways',
  'result_retention',
] as const;
/** How long a task's stored result is kept after the task ends, unless the rule says otherwise. */
export const DEFAULT_RESULT_RETENTION_SECONDS = 3600;
const MAX_RESULT_RETENTION_SECONDS = 90 * 86_400;
const CALLER_KEYS = ['spiffe_ids', 'trust_domains'] as const;
const DELEGATION_KEYS = ['to', 'max_depth', 'scopes', 'audiences', 'read_children'] as const;
const ISSUER_KEYS = ['issuer', 'jwks_file', 'jwks_url', 'audiences', 'algorithms', 'max_age', 'required_claims'] as const;
const PRINCIPAL_KEYS = ['issuers', 'claims'] as const;
const APPROVAL_KEYS = ['approvers'] as const;
/** Deeper chains are refused: each hop is a task, and an unbounded tree is an unbounded fan-out of authority. */
const MAX_DELEGATION_DEPTH = 16;
/** Asymmetric JWS algorithms only: a subject token must be verifiable without holding the IdP's secret. */
const SIGNATURE_ALGORITHMS = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA', 'Ed25519'];
const DEFAULT_ALGORITHMS = ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'];
/** A JWKS over plain HTTP only from this machine (a local IdP, tests): anywhere else it could be swapped in transit. */
const LOOPBACK_HOSTS = ['127.0.0.1', 'localhost', '[::1]'];
const RULE_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const TOKEN_TEXT = /^[\x21-\x7e]+$/; // printable ASCII, no spaces

/**
 * Parses and validates a policy document. `source` names it in error messages (a file path).
 * Throws PolicyError naming the path of the first bad field.
 */
export function parsePolicy(text: string, source: string): Policy {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: true, strict: true, prettyErrors: true, lineCounter });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem) {
    const [start] = problem.linePos ?? [];
    const position = start ? { line: start.line, column: start.col } : undefined;
    if (problem.code === 'DUPLICATE_KEY') {
      const dup = findDuplicateKey(doc);
      if (dup) throw new PolicyError(source, dup, `duplicate key (${firstLine(problem.message).replace(/^Map keys must be unique /, '')})`, position);
    }
    throw new PolicyError(source, '', `not valid YAML: ${firstLine(problem.message)}`, position);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new PolicyError(source, '', `not valid YAML: ${(err as Error).message}`);
  }
  const ctx: Context = new Context(source, (path) => positionOf(doc, lineCounter, path));
  const top = ctx.object(data, '', TOP_KEYS);
  if (top.version === undefined) ctx.fail('version', 'is required (version: 1)');
  if (top.version !== 1) ctx.fail('version', `must be 1, got ${describe(top.version)}`);
  const admins = top.admins === undefined ? [] : ctx.list(top.admins, 'admins', { allowEmpty: true }).map((v, i) => ctx.pattern(v, `admins[${i}]`));
  // Before the rules, which name these issuers.
  const subjectIssuers = top.subject_issuers === undefined ? [] : parseSubjectIssuers(ctx, top.subject_issuers);
  if (top.rules === undefined) ctx.fail('rules', 'is required (use rules: [] for a policy that allows nothing)');
  const issuerNames = new Set(subjectIssuers.map((i) => i.issuer));
  const rules = ctx.list(top.rules, 'rules', { allowEmpty: true }).map((v, i) => parseRule(ctx, v, `rules[${i}]`, issuerNames));
  const seen = new Map<string, number>();
  rules.forEach((rule, i) => {
    const first = seen.get(rule.name);
    if (first !== undefined) ctx.fail(`rules[${i}].name`, `duplicate rule name "${rule.name}" (also rules[${first}])`);
    seen.set(rule.name, i);
  });
  return new Policy({ text, source, rules, admins, subjectIssuers });
}

function parseRule(ctx: Context, value: unknown, path: string, issuers: ReadonlySet<string>): PolicyRule {
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
  let approvers: PrincipalMatcher | undefined;
  if (raw.require_approval !== undefined) {
    const approvalPath = `${path}.require_approval`;
    if (typeof raw.require_approval === 'boolean') {
      requireApproval = raw.require_approval;
    } else if (typeof raw.require_approval === 'object' && raw.require_approval !== null && !Array.isArray(raw.require_approval)) {
      const approval = ctx.object(raw.require_approval, approvalPath, APPROVAL_KEYS);
      if (approval.approvers === undefined) ctx.fail(`${approvalPath}.approvers`, 'is required (or write require_approval: true for an admin to approve)');
      approvers = parsePrincipalMatcher(ctx, approval.approvers, `${approvalPath}.approvers`, issuers);
      requireApproval = true;
    } else {
      ctx.fail(approvalPath, `must be true, false or {approvers: …}, got ${describe(raw.require_approval)}`);
    }
  }
  const delegation = raw.delegation === undefined ? undefined : parseDelegation(ctx, raw.delegation, `${path}.delegation`, scopes);
  const principals = raw.principals === undefined ? undefined : parsePrincipalMatcher(ctx, raw.principals, `${path}.principals`, issuers);
  const bindSession = raw.bind_session === undefined ? false : ctx.boolean(raw.bind_session, `${path}.bind_session`);
  if (bindSession && !principals) {
    ctx.fail(`${path}.bind_session`, 'needs principals: without a principal there is no session to bind the task to');
  }
  const gateways = raw.gateways === undefined ? [] : ctx.list(raw.gateways, `${path}.gateways`).map((v, i) => ctx.pattern(v, `${path}.gateways[${i}]`));
  const resultRetentionSeconds =
    raw.result_retention === undefined ? DEFAULT_RESULT_RETENTION_SECONDS : ctx.duration(raw.result_retention, `${path}.result_retention`);
  if (resultRetentionSeconds > MAX_RESULT_RETENTION_SECONDS) {
    ctx.fail(`${path}.result_retention`, `at most 90d (results are kept in the database; the trail keeps the evidence of their reads)`);
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
    ...(approvers !== undefined ? { approvers } : {}),
    ...(delegation !== undefined ? { delegation } : {}),
    ...(principals !== undefined ? { principals } : {}),
    bindSession,
    gateways,
    resultRetentionSeconds,
  };
}

function parseDelegation(ctx: Context, value: unknown, path: string, ruleScopes: readonly string[]): DelegationRule {
  const raw = ctx.object(value, path, DELEGATION_KEYS);
  let maxDepth = 0;
  if (raw.max_depth !== undefined) {
    const depth = raw.max_depth;
    if (typeof depth !== 'number' || !Number.isInteger(depth) || depth < 0 || depth > MAX_DELEGATION_DEPTH) {
      ctx.fail(`${path}.max_depth`, `must be a whole number from 0 to ${MAX_DELEGATION_DEPTH}, got ${describe(depth)}`);
    }
    maxDepth = depth;
  }
  if (raw.to === undefined) ctx.fail(`${path}.to`, 'is required (who may receive delegated sub-tasks)');
  // An empty `to` delegates to nobody: only consistent with max_depth 0.
  const to = ctx.list(raw.to, `${path}.to`, { allowEmpty: maxDepth === 0 }).map((v, i) => ctx.pattern(v, `${path}.to[${i}]`));
  const scopes = raw.scopes === undefined ? [ANY] : ctx.names(raw.scopes, `${path}.scopes`);
  // A scope the rule never grants cannot be handed on: listing one is a typo or a misunderstanding.
  if (ruleScopes.length !== 1 || ruleScopes[0] !== ANY) {
    scopes.forEach((s, i) => {
      if (s !== ANY && !ruleScopes.includes(s)) ctx.fail(`${path}.scopes[${i}]`, `${JSON.stringify(s)} is not one of the rule's scopes`);
    });
  }
  const audiences =
    raw.audiences === undefined
      ? []
      : ctx.list(raw.audiences, `${path}.audiences`, { allowEmpty: true }).map((v, i) => ctx.pattern(v, `${path}.audiences[${i}]`));
  const readChildren = raw.read_children === undefined ? false : ctx.boolean(raw.read_children, `${path}.read_children`);
  return { to, maxDepth, scopes, audiences, readChildren };
}

function parsePrincipalMatcher(ctx: Context, value: unknown, path: string, issuers: ReadonlySet<string>): PrincipalMatcher {
  const raw = ctx.object(value, path, PRINCIPAL_KEYS);
  if (raw.issuers === undefined) ctx.fail(`${path}.issuers`, 'is required');
  const names = ctx.list(raw.issuers, `${path}.issuers`).map((v, i) => {
    const issuer = ctx.string(v, `${path}.issuers[${i}]`);
    if (!issuers.has(issuer)) {
      const known = issuers.size === 0 ? 'the policy has none' : [...issuers].join(', ');
      ctx.fail(`${path}.issuers[${i}]`, `${JSON.stringify(issuer)} is not one of subject_issuers (${known})`);
    }
    return issuer;
  });
  const dup = names.findIndex((n, i) => names.indexOf(n) !== i);
  if (dup !== -1) ctx.fail(`${path}.issuers[${dup}]`, `${JSON.stringify(names[dup])} is listed twice`);
  const claims: Record<string, ClaimValue> = {};
  if (raw.claims !== undefined) {
    const claimsPath = `${path}.claims`;
    const record = ctx.mapping(raw.claims, claimsPath);
    for (const [claim, want] of Object.entries(record)) {
      if (!TOKEN_TEXT.test(claim)) ctx.fail(`${claimsPath}.${claim}`, 'a claim name must be printable ASCII without spaces');
      if (typeof want !== 'string' && typeof want !== 'number' && typeof want !== 'boolean') {
        ctx.fail(`${claimsPath}.${claim}`, `must be a string, number or boolean, got ${describe(want)}`);
      }
      claims[claim] = want;
    }
  }
  return { issuers: names, claims };
}

function parseSubjectIssuers(ctx: Context, value: unknown): SubjectIssuer[] {
  const issuers = ctx.list(value, 'subject_issuers', { allowEmpty: true }).map((v, i) => parseSubjectIssuer(ctx, v, `subject_issuers[${i}]`));
  const seen = new Map<string, number>();
  issuers.forEach((issuer, i) => {
    const first = seen.get(issuer.issuer);
    // One configuration per `iss`: a token's issuer picks its keys, so two would be ambiguous.
    if (first !== undefined) ctx.fail(`subject_issuers[${i}].issuer`, `duplicate issuer ${JSON.stringify(issuer.issuer)} (also subject_issuers[${first}])`);
    seen.set(issuer.issuer, i);
  });
  return issuers;
}

function parseSubjectIssuer(ctx: Context, value: unknown, path: string): SubjectIssuer {
  const raw = ctx.object(value, path, ISSUER_KEYS);
  for (const key of ['issuer', 'audiences'] as const) {
    if (raw[key] === undefined) ctx.fail(`${path}.${key}`, 'is required');
  }
  const issuer = ctx.string(raw.issuer, `${path}.issuer`);
  if (!TOKEN_TEXT.test(issuer)) ctx.fail(`${path}.issuer`, `${JSON.stringify(issuer)} must be non-empty printable ASCII without spaces`);

  if ((raw.jwks_file === undefined) === (raw.jwks_url === undefined)) {
    ctx.fail(path, "needs exactly one of jwks_file and jwks_url (where the issuer's signing keys are)");
  }
  let jwksFile: string | undefined;
  let jwksUrl: URL | undefined;
  if (raw.jwks_file !== undefined) {
    jwksFile = ctx.string(raw.jwks_file, `${path}.jwks_file`);
    // Relative to what? The broker's working directory is not something a policy should depend on.
    if (!isAbsolute(jwksFile)) ctx.fail(`${path}.jwks_file`, `${JSON.stringify(jwksFile)} must be an absolute path`);
  } else {
    jwksUrl = ctx.jwksUrl(raw.jwks_url, `${path}.jwks_url`);
  }

  const audiences = ctx.names(raw.audiences, `${path}.audiences`);
  const star = audiences.indexOf(ANY);
  if (star !== -1) ctx.fail(`${path}.audiences[${star}]`, 'name the audiences the broker accepts; "*" is not allowed here');

  let algorithms = DEFAULT_ALGORITHMS;
  if (raw.algorithms !== undefined) {
    algorithms = ctx.list(raw.algorithms, `${path}.algorithms`).map((v, i) => {
      const where = `${path}.algorithms[${i}]`;
      const alg = ctx.string(v, where);
      if (alg.toLowerCase() === 'none') ctx.fail(where, '"none" is refused: an unsigned token proves nothing');
      if (/^HS\d+$/i.test(alg)) ctx.fail(where, `${JSON.stringify(alg)} is refused: a shared-secret (HMAC) algorithm cannot be verified against a public JWKS`);
      if (!SIGNATURE_ALGORITHMS.includes(alg))
        ctx.fail(where, `${JSON.stringify(alg)} is not a supported signature algorithm (one of: ${SIGNATURE_ALGORITHMS.join(', ')})`);
      return alg;
    });
    const dup = algorithms.findIndex((n, i) => algorithms.indexOf(n) !== i);
    if (dup !== -1) ctx.fail(`${path}.algorithms[${dup}]`, `${JSON.stringify(algorithms[dup])} is listed twice`);
  }

  const maxAgeSeconds = raw.max_age === undefined ? undefined : ctx.duration(raw.max_age, `${path}.max_age`);
  const requiredClaims = raw.required_claims === undefined ? [] : ctx.names(raw.required_claims, `${path}.required_claims`);
  const anyClaim = requiredClaims.indexOf(ANY);
  if (anyClaim !== -1) ctx.fail(`${path}.required_claims[${anyClaim}]`, 'name the claims; "*" is not allowed here');

  return {
    issuer,
    ...(jwksFile !== undefined ? { jwksFile } : {}),
    ...(jwksUrl !== undefined ? { jwksUrl } : {}),
    audiences,
    algorithms: [...algorithms],
    ...(maxAgeSeconds !== undefined ? { maxAgeSeconds } : {}),
    requiredClaims,
  };
}

class Context {
  constructor(
    readonly source: string,
    /** Where the field at `path` is in the text (for the error's line and column). */
    readonly positionOf: (path: string) => PolicyPosition | undefined = () => undefined,
  ) {}

  fail(path: string, detail: string): never {
    throw new PolicyError(this.source, path, detail, this.positionOf(path));
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

  boolean(value: unknown, path: string): boolean {
    if (typeof value !== 'boolean') this.fail(path, `must be true or false, got ${describe(value)}`);
    return value;
  }

  /** A mapping whose keys are not fixed (claim names); an empty one is allowed. */
  mapping(value: unknown, path: string): Record<string, unknown> {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) this.fail(path, `must be a mapping, got ${describe(value)}`);
    return value as Record<string, unknown>;
  }

  /** https, or http to this machine only; no credentials in the URL (they would end up in logs). */
  jwksUrl(value: unknown, path: string): URL {
    const text = this.string(value, path);
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      return this.fail(path, `${JSON.stringify(text)} is not a URL`);
    }
    if (url.protocol === 'http:') {
      if (!LOOPBACK_HOSTS.includes(url.hostname)) this.fail(path, `${JSON.stringify(text)}: http is only allowed for 127.0.0.1, localhost or ::1; use https`);
    } else if (url.protocol !== 'https:') {
      this.fail(path, `${JSON.stringify(text)} must be an https URL`);
    }
    if (url.username !== '' || url.password !== '') this.fail(path, `${JSON.stringify(url.host)}: credentials in the URL are not allowed`);
    return url;
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

/**
 * Where the field at `path` (PolicyError notation: `rules[1].callers.spiffe_ids[0]`) is in the
 * text: the key of a mapping entry, the item of a list. A path that goes further than the
 * document (a required key that is missing) points at the deepest part that exists, e.g. the
 * rule that lacks the key; the empty path at the document's first node.
 */
function positionOf(doc: Document, lineCounter: LineCounter, path: string): PolicyPosition | undefined {
  const steps = [...path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : (m[1] ?? '')));
  let node: unknown = doc.contents;
  let offset = (doc.contents as { range?: [number, number, number] } | null)?.range?.[0];
  for (const step of steps) {
    if (isAlias(node)) node = node.resolve(doc);
    if (typeof step === 'number' && isSeq(node)) {
      const item = node.items[step] as { range?: [number, number, number] } | undefined;
      if (item?.range === undefined) break;
      node = item;
      offset = item.range[0];
    } else if (typeof step === 'string' && isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === step);
      const key = pair?.key as { range?: [number, number, number] } | undefined;
      if (!pair || key?.range === undefined) break;
      node = pair.value;
      offset = key.range[0];
    } else {
      break;
    }
  }
  if (offset === undefined) return undefined;
  const { line, col } = lineCounter.linePos(offset);
  return { line, column: col };
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
