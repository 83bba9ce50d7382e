/**
 * SPIFFE ID matchers for policy rules and admin selectors.
 *
 * Semantics (documented in the README):
 *   - the trust domain is always literal: trust is granted per trust domain, never by wildcard;
 *   - `*` stands for exactly one whole path segment;
 *   - `**`, allowed only as the last segment, stands for one or more further segments
 *     (`spiffe://td/ns/**` matches `spiffe://td/ns/a` and `spiffe://td/ns/a/b`, not `spiffe://td/ns`);
 *   - a wildcard inside a segment (`billing-*`) is rejected, so a pattern never means
 *     something subtler than it looks.
 */
import { quoted } from '../errors.js';
import { SpiffeId, SpiffeIdError } from './id.js';

export class SpiffeIdPatternError extends Error {
  override readonly name = 'SpiffeIdPatternError';
  constructor(
    readonly pattern: string,
    detail: string,
  ) {
    super(`spiffe id pattern ${quoted(pattern, 128)}: ${detail}`);
  }
}

export interface SpiffeIdMatcher {
  /** The one trust domain this matcher can ever match. */
  readonly trustDomain: string;
  matches(id: SpiffeId): boolean;
  toString(): string;
}

type Segment = { kind: 'literal'; value: string } | { kind: 'one' } | { kind: 'rest' };

class PatternMatcher implements SpiffeIdMatcher {
  readonly trustDomain: string;
  readonly #segments: readonly Segment[];
  readonly #source: string;

  constructor(trustDomain: string, segments: readonly Segment[], source: string) {
    this.trustDomain = trustDomain;
    this.#segments = segments;
    this.#source = source;
  }

  matches(id: SpiffeId): boolean {
    if (id.trustDomain !== this.trustDomain) return false;
    const actual = id.segments;
    const last = this.#segments[this.#segments.length - 1];
    const hasRest = last?.kind === 'rest';
    const fixed = hasRest ? this.#segments.length - 1 : this.#segments.length;
    if (hasRest ? actual.length <= fixed : actual.length !== fixed) return false;
    for (let i = 0; i < fixed; i++) {
      const want = this.#segments[i]!;
      if (want.kind === 'literal' && want.value !== actual[i]) return false;
    }
    return true;
  }

  toString(): string {
    return this.#source;
  }
}

class TrustDomainMatcher implements SpiffeIdMatcher {
  constructor(readonly trustDomain: string) {}
  matches(id: SpiffeId): boolean {
    return id.trustDomain === this.trustDomain;
  }
  toString(): string {
    return `spiffe://${this.trustDomain} (any ID)`;
  }
}

/** Matches exactly one SPIFFE ID. */
export function exactId(id: SpiffeId | string): SpiffeIdMatcher {
  const parsed = typeof id === 'string' ? SpiffeId.parse(id) : id;
  return new PatternMatcher(
    parsed.trustDomain,
    parsed.segments.map((value) => ({ kind: 'literal', value })),
    parsed.toString(),
  );
}

/** Matches every ID of a trust domain, including the bare trust domain ID. */
export function trustDomainOf(trustDomain: string): SpiffeIdMatcher {
  const td = SpiffeId.parse(`spiffe://${trustDomain}`);
  if (td.path !== '') throw new SpiffeIdPatternError(trustDomain, 'a trust domain has no path');
  return new TrustDomainMatcher(td.trustDomain);
}

export function parseSpiffeIdPattern(pattern: string): SpiffeIdMatcher {
  if (!pattern.includes('*')) {
    try {
      return exactId(pattern);
    } catch (err) {
      if (err instanceof SpiffeIdError) throw new SpiffeIdPatternError(pattern, err.message);
      throw err;
    }
  }
  // Validate the shape by substituting each wildcard segment with a placeholder
  // that is a valid segment, so every SPIFFE ID rule applies to the literal parts.
  const prefix = 'spiffe://';
  // A SPIFFE ID is at most 2048 bytes; a pattern for one is no longer.
  if (pattern.length > 2048) throw new SpiffeIdPatternError(pattern, 'longer than 2048 characters');
  if (!pattern.startsWith(prefix)) {
    throw new SpiffeIdPatternError(pattern, "must start with 'spiffe://'");
  }
  const rest = pattern.slice(prefix.length);
  const slash = rest.indexOf('/');
  const td = slash === -1 ? rest : rest.slice(0, slash);
  if (td.includes('*')) {
    throw new SpiffeIdPatternError(pattern, 'the trust domain cannot contain a wildcard; trust is granted per trust domain');
  }
  if (slash === -1) throw new SpiffeIdPatternError(pattern, 'wildcards are only allowed in the path');
  const raw = rest.slice(slash + 1).split('/');
  const segments: Segment[] = raw.map((s, i) => {
    if (s === '*') return { kind: 'one' };
    if (s === '**') {
      if (i !== raw.length - 1) throw new SpiffeIdPatternError(pattern, "'**' is only allowed as the last segment");
      return { kind: 'rest' };
    }
    if (s.includes('*')) {
      throw new SpiffeIdPatternError(pattern, `${quoted(s, 64)}: a wildcard must be a whole segment ('*' or a trailing '**')`);
    }
    return { kind: 'literal', value: s };
  });
  const probe = `${prefix}${td}/${segments.map((s) => (s.kind === 'literal' ? s.value : 'x')).join('/')}`;
  try {
    SpiffeId.parse(probe);
  } catch (err) {
    if (err instanceof SpiffeIdError) {
      throw new SpiffeIdPatternError(pattern, err.message.replace(/ \(in ".*"\)$/s, ''));
    }
    throw err;
  }
  return new PatternMatcher(td, segments, pattern);
}

/** True when `pattern` matches `id`; a convenience for one-off checks. */
export function matchesPattern(pattern: string, id: SpiffeId | string): boolean {
  return parseSpiffeIdPattern(pattern).matches(typeof id === 'string' ? SpiffeId.parse(id) : id);
}

/**
 * A PostgreSQL regular expression (for `~`) equivalent to a pattern, so selectors can be
 * evaluated in the database. Only '.' needs escaping: IDs hold letters, digits, '.', '-', '_'.
 */
export function patternToPostgresRegex(pattern: string): string {
  parseSpiffeIdPattern(pattern); // validates
  const [scheme, rest] = ['spiffe://', pattern.slice('spiffe://'.length)];
  const body = rest
    .split('/')
    .map((segment, i) => {
      if (i === 0) return segment.replaceAll('.', '\\.');
      if (segment === '*') return '[^/]+';
      if (segment === '**') return '[^/]+(/[^/]+)*';
      return segment.replaceAll('.', '\\.');
    })
    .join('/');
  return `^${scheme}${body}$`;
}
