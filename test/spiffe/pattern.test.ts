import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../../src/spiffe/id.js';
import { exactId, matchesPattern, parseSpiffeIdPattern, patternToPostgresRegex, SpiffeIdPatternError, trustDomainOf } from '../../src/spiffe/pattern.js';

const id = (s: string) => SpiffeId.parse(s);

describe('SPIFFE ID matchers', () => {
  it('exactId matches only that ID', () => {
    const m = exactId('spiffe://example.org/ns/prod/sa/api');
    expect(m.trustDomain).toBe('example.org');
    expect(m.matches(id('spiffe://example.org/ns/prod/sa/api'))).toBe(true);
    expect(m.matches(id('spiffe://example.org/ns/prod/sa/api/x'))).toBe(false);
    expect(m.matches(id('spiffe://example.org/ns/prod/sa'))).toBe(false);
    expect(m.matches(id('spiffe://example.com/ns/prod/sa/api'))).toBe(false);
  });

  it('trustDomainOf matches every ID of the trust domain, the bare one included', () => {
    const m = trustDomainOf('example.org');
    expect(m.matches(id('spiffe://example.org'))).toBe(true);
    expect(m.matches(id('spiffe://example.org/a/b/c'))).toBe(true);
    expect(m.matches(id('spiffe://example.org.evil/a'))).toBe(false);
    expect(m.matches(id('spiffe://sub.example.org/a'))).toBe(false);
    expect(() => trustDomainOf('Example.org')).toThrow();
  });

  describe('patterns', () => {
    it.each<[string, string, boolean]>([
      // `*` is exactly one whole segment
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.org/ns/prod/sa/billing', true],
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.org/ns/dev/sa/billing', true],
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.org/ns/a/b/sa/billing', false],
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.org/ns/sa/billing', false],
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.org/ns/prod/sa/billing2', false],
      ['spiffe://example.org/ns/*/sa/billing', 'spiffe://example.com/ns/prod/sa/billing', false],
      ['spiffe://example.org/*', 'spiffe://example.org/x', true],
      ['spiffe://example.org/*', 'spiffe://example.org', false],
      ['spiffe://example.org/*', 'spiffe://example.org/x/y', false],
      // trailing `**` is one or more further segments
      ['spiffe://example.org/ns/prod/**', 'spiffe://example.org/ns/prod/sa', true],
      ['spiffe://example.org/ns/prod/**', 'spiffe://example.org/ns/prod/sa/api/v2', true],
      ['spiffe://example.org/ns/prod/**', 'spiffe://example.org/ns/prod', false],
      ['spiffe://example.org/ns/prod/**', 'spiffe://example.org/ns/production/sa', false],
      ['spiffe://example.org/ns/prod/**', 'spiffe://example.org/ns', false],
      ['spiffe://example.org/**', 'spiffe://example.org/a', true],
      ['spiffe://example.org/**', 'spiffe://example.org/a/b/c/d', true],
      ['spiffe://example.org/**', 'spiffe://example.org', false],
      ['spiffe://example.org/**', 'spiffe://other.org/a', false],
      // both together
      ['spiffe://example.org/ns/*/sa/**', 'spiffe://example.org/ns/prod/sa/api', true],
      ['spiffe://example.org/ns/*/sa/**', 'spiffe://example.org/ns/prod/sa', false],
      ['spiffe://example.org/ns/*/sa/**', 'spiffe://example.org/ns/prod/xx/api', false],
      // no wildcard: exact
      ['spiffe://example.org/ns/prod', 'spiffe://example.org/ns/prod', true],
      ['spiffe://example.org/ns/prod', 'spiffe://example.org/ns/prod/x', false],
    ])('%s vs %s → %s', (pattern, candidate, expected) => {
      expect(parseSpiffeIdPattern(pattern).matches(id(candidate))).toBe(expected);
      expect(matchesPattern(pattern, candidate)).toBe(expected);
    });

    it.each<[string, RegExp]>([
      ['spiffe://*.example.org/x', /trust domain cannot contain a wildcard/],
      ['spiffe://*/x', /trust domain cannot contain a wildcard/],
      ['spiffe://example.org/**/x', /only allowed as the last segment/],
      ['spiffe://example.org/billing-*', /must be a whole segment/],
      ['spiffe://example.org/a/***', /must be a whole segment/],
      ['https://example.org/*', /must start with 'spiffe:\/\/'/],
      ['spiffe://example.org/ns//*', /empty segments/],
      ['spiffe://example.org/ns/../*', /dot segments/],
      ['spiffe://example.org/ns/*/', /trailing slash/],
      ['spiffe://Example.org/*', /trust domain characters/],
      ['spiffe://example.org:443/*', /port/],
      ['spiffe://example.org/a b', /path segment characters/],
    ])('rejects %s', (pattern, message) => {
      expect(() => parseSpiffeIdPattern(pattern)).toThrow(SpiffeIdPatternError);
      expect(() => parseSpiffeIdPattern(pattern)).toThrow(message);
    });

    it('keeps its source text and trust domain', () => {
      const m = parseSpiffeIdPattern('spiffe://example.org/ns/*/sa/**');
      expect(m.toString()).toBe('spiffe://example.org/ns/*/sa/**');
      expect(m.trustDomain).toBe('example.org');
    });
  });

  describe('patternToPostgresRegex (how the admin plane selects owners in SQL)', () => {
    const patterns = [
      'spiffe://example.org/ns/*/sa/billing',
      'spiffe://example.org/ns/prod/**',
      'spiffe://example.org/**',
      'spiffe://example.org/a.b/*',
      'spiffe://example.org',
      'spiffe://ex-ample.org/x',
    ];
    const ids = [
      'spiffe://example.org',
      'spiffe://example.org/ns/prod',
      'spiffe://example.org/ns/prod/sa/billing',
      'spiffe://example.org/ns/dev/sa/billing',
      'spiffe://example.org/ns/a/b/sa/billing',
      'spiffe://example.org/ns/prod/x/y/z',
      'spiffe://example.org/axb/c',
      'spiffe://example.org/a.b/c',
      'spiffe://examplexorg/ns/prod/sa',
      'spiffe://example.org.evil/ns/prod/sa',
      'spiffe://ex-ample.org/x',
    ];
    it.each(patterns)('%s agrees with the matcher on every ID', (pattern) => {
      const regex = new RegExp(patternToPostgresRegex(pattern));
      const matcher = parseSpiffeIdPattern(pattern);
      for (const candidate of ids) expect(regex.test(candidate), candidate).toBe(matcher.matches(id(candidate)));
    });
  });
});
