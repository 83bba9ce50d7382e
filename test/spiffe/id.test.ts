import { describe, expect, it } from 'vitest';
import { isValidSpiffeId, parseTrustDomain, SpiffeId, SpiffeIdError, type SpiffeIdRule } from '../../src/spiffe/id.js';

function ruleOf(input: string): SpiffeIdRule | 'accepted' {
  try {
    SpiffeId.parse(input);
    return 'accepted';
  } catch (err) {
    expect(err).toBeInstanceOf(SpiffeIdError);
    return (err as SpiffeIdError).rule;
  }
}

describe('SPIFFE ID parsing', () => {
  it.each([
    'spiffe://example.org',
    'spiffe://example.org/workload',
    'spiffe://example.org/ns/prod/sa/billing',
    'spiffe://a-b_c.d9/Path.With-Mixed_Case/0',
    'spiffe://td/...x/x..', // segments containing dots are fine when not exactly "." or ".."
  ])('accepts %s and round-trips it', (input) => {
    const id = SpiffeId.parse(input);
    expect(id.toString()).toBe(input);
    expect(isValidSpiffeId(input)).toBe(true);
  });

  it('splits trust domain, path and segments', () => {
    const id = SpiffeId.parse('spiffe://example.org/ns/prod/sa/api');
    expect(id.trustDomain).toBe('example.org');
    expect(id.path).toBe('/ns/prod/sa/api');
    expect(id.segments).toEqual(['ns', 'prod', 'sa', 'api']);
    expect(id.isMemberOf('example.org')).toBe(true);
    expect(id.isMemberOf('example.com')).toBe(false);
    expect(SpiffeId.parse('spiffe://example.org').segments).toEqual([]);
    expect(id.equals(SpiffeId.fromParts('example.org', '/ns/prod/sa/api'))).toBe(true);
  });

  it.each<[string, string, SpiffeIdRule]>([
    ['empty input', '', 'empty'],
    ['no scheme', 'example.org/workload', 'scheme'],
    ['upper-case scheme', 'SPIFFE://example.org/workload', 'scheme'],
    ['another scheme', 'https://example.org/workload', 'scheme'],
    ['a single slash after the scheme', 'spiffe:/example.org/workload', 'scheme'],
    ['no trust domain', 'spiffe:///workload', 'trust-domain-missing'],
    ['bare scheme', 'spiffe://', 'trust-domain-missing'],
    ['upper-case trust domain', 'spiffe://Example.org/workload', 'trust-domain-chars'],
    ['a space in the trust domain', 'spiffe://exa mple.org', 'trust-domain-chars'],
    ['a percent-encoded trust domain', 'spiffe://exa%41mple.org', 'trust-domain-chars'],
    ['a unicode trust domain', 'spiffe://exämple.org', 'trust-domain-chars'],
    ['a trust domain longer than 255 characters', `spiffe://${'a'.repeat(256)}/x`, 'trust-domain-length'],
    ['user info', 'spiffe://user@example.org/workload', 'user-info'],
    ['user and password', 'spiffe://user:pw@example.org/workload', 'user-info'],
    ['a port', 'spiffe://example.org:8443/workload', 'port'],
    ['a query', 'spiffe://example.org/workload?x=1', 'query'],
    ['a fragment', 'spiffe://example.org/workload#frag', 'fragment'],
    ['an empty segment', 'spiffe://example.org/ns//sa', 'path-empty-segment'],
    ['a leading double slash', 'spiffe://example.org//ns', 'path-empty-segment'],
    ['a "." segment', 'spiffe://example.org/ns/./sa', 'path-dot-segment'],
    ['a ".." segment', 'spiffe://example.org/ns/../sa', 'path-dot-segment'],
    ['a final ".." segment', 'spiffe://example.org/..', 'path-dot-segment'],
    ['a trailing slash', 'spiffe://example.org/ns/', 'path-trailing-slash'],
    ['a trailing slash on the bare trust domain', 'spiffe://example.org/', 'path-trailing-slash'],
    ['a space in the path', 'spiffe://example.org/my workload', 'path-chars'],
    ['a unicode path character', 'spiffe://example.org/wörkload', 'path-chars'],
    ['a colon in the path', 'spiffe://example.org/a:b', 'path-chars'],
    ['a percent-encoded path character', 'spiffe://example.org/work%20load', 'path-percent-encoded'],
    ['a percent-encoded slash', 'spiffe://example.org/a%2Fb', 'path-percent-encoded'],
  ])('rejects %s with rule %s', (_label, input, rule) => {
    expect(ruleOf(input)).toBe(rule);
    expect(isValidSpiffeId(input)).toBe(false);
  });

  it('every rejection message names the broken rule and echoes the input', () => {
    expect(() => SpiffeId.parse('spiffe://example.org:443/x')).toThrow(/spiffeid: a port is not allowed .*example\.org:443/);
    expect(() => SpiffeId.parse('spiffe://example.org/a/')).toThrow(/trailing slash/);
    expect(() => SpiffeId.parse('spiffe://example.org/%41')).toThrow(/percent-encoded/);
  });

  describe('the 2048-byte limit', () => {
    const base = 'spiffe://example.org/';
    it('accepts an ID of exactly 2048 bytes', () => {
      const id = base + 'a'.repeat(2048 - base.length);
      expect(Buffer.byteLength(id)).toBe(2048);
      expect(ruleOf(id)).toBe('accepted');
    });
    it('rejects an ID of 2049 bytes', () => {
      const id = base + 'a'.repeat(2049 - base.length);
      expect(ruleOf(id)).toBe('too-long');
    });
    it('counts bytes, not characters', () => {
      // 1024 two-byte characters exceed the limit in bytes even though the string is shorter.
      expect(ruleOf(base + 'é'.repeat(1024))).toBe('too-long');
    });
  });

  it('parseTrustDomain accepts a name or a trust domain ID and refuses a path', () => {
    expect(parseTrustDomain('example.org')).toBe('example.org');
    expect(parseTrustDomain('spiffe://example.org')).toBe('example.org');
    expect(() => parseTrustDomain('spiffe://example.org/x')).toThrow(/cannot have a path/);
    expect(() => parseTrustDomain('Example.org')).toThrow(SpiffeIdError);
  });
});
