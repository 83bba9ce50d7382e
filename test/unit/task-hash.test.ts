/**
 * The task hash is part of the contract: anyone holding a spec recomputes it as
 * base64url(SHA-256(RFC 8785 JSON of action, audience, params, resources, scopes, ttl_seconds)).
 * The canonical text below is written out by hand from RFC 8785, not produced by a library.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { TaskSpec } from '../../src/model/task.js';
import { canonicalSpecJson, hashedSpecDocument, taskHash, taskHashOf } from '../../src/tasks/spec.js';

const SPEC: TaskSpec = {
  action: 'invoice.export',
  resources: ['invoices/2030-01', 'invoices/2030-02'],
  audience: 'spiffe://example.org/ns/billing/sa/invoices',
  scopes: ['invoices:read', 'invoices:list'],
  params: {
    zeta: 'line\nbreak\u001f',
    alpha: { b: [true, null, 2.5, 1e21, 1e-7, -0], a: 'é€😀' },
    Ab: 100.0,
    '\ufb00': 3,
    '😀': 2,
    '€': 1,
  },
  ttlSeconds: 900,
};

/*
 * RFC 8785 by hand: members sorted by UTF-16 code units at every level ("Ab" < "alpha" <
 * "zeta" < "€" U+20AC < "😀" U+D83D U+DE00 < "ﬀ" U+FB00, although U+1F600 > U+FB00 as code
 * points); numbers in ECMAScript form (100, 1e+21, 1e-7, and 0 for -0); strings with only the
 * required escapes (\n, \u001f in lower-case hex) and everything else as UTF-8; lists in the
 * order given; no whitespace.
 */
const CANONICAL = String.raw`{"action":"invoice.export","audience":"spiffe://example.org/ns/billing/sa/invoices","params":{"Ab":100,"alpha":{"a":"é€😀","b":[true,null,2.5,1e+21,1e-7,0]},"zeta":"line\nbreak\u001f","€":1,"😀":2,"ﬀ":3},"resources":["invoices/2030-01","invoices/2030-02"],"scopes":["invoices:read","invoices:list"],"ttl_seconds":900}`;

const sha256 = (text: string) => createHash('sha256').update(Buffer.from(text, 'utf8')).digest('base64url');

describe('the canonical spec', () => {
  it('is the RFC 8785 text of the six contract fields', () => {
    expect(canonicalSpecJson(SPEC)).toBe(CANONICAL);
    expect(Object.keys(hashedSpecDocument(SPEC)).sort()).toEqual(['action', 'audience', 'params', 'resources', 'scopes', 'ttl_seconds']);
  });

  it('is still JSON for the same spec', () => {
    expect(JSON.parse(CANONICAL)).toEqual({
      ...hashedSpecDocument(SPEC),
      params: { ...SPEC.params, alpha: { a: 'é€😀', b: [true, null, 2.5, 1e21, 1e-7, 0] } },
    });
  });
});

describe('the task hash', () => {
  it('is base64url SHA-256 of the UTF-8 canonical text', () => {
    const expected = sha256(CANONICAL);
    expect(expected).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(taskHash(SPEC)).toBe(expected);
    expect(taskHashOf(CANONICAL)).toBe(expected);
  });

  it('does not depend on the order members were written in', () => {
    const reordered: TaskSpec = {
      ttlSeconds: 900,
      scopes: [...SPEC.scopes],
      params: { '€': 1, Ab: 100, '😀': 2, alpha: { a: 'é€😀', b: [true, null, 2.5, 1e21, 1e-7, 0] }, zeta: 'line\nbreak\u001f', '\ufb00': 3 },
      audience: SPEC.audience,
      resources: [...SPEC.resources],
      action: SPEC.action,
    };
    expect(taskHash(reordered)).toBe(sha256(CANONICAL));
  });

  it.each<[string, Partial<TaskSpec>]>([
    ['the order of resources', { resources: ['invoices/2030-02', 'invoices/2030-01'] }],
    ['the order of scopes', { scopes: ['invoices:list', 'invoices:read'] }],
    ['the ttl', { ttlSeconds: 901 }],
    ['a param', { params: { ...SPEC.params, Ab: 101 } }],
    ['a param of another type', { params: { ...SPEC.params, Ab: '100' } }],
    ['the action', { action: 'invoice.Export' }],
    ['the audience', { audience: 'spiffe://example.org/ns/billing/sa/invoices2' }],
  ])('changes with %s', (_name, change) => {
    expect(taskHash({ ...SPEC, ...change })).not.toBe(sha256(CANONICAL));
  });

  it('of the smallest spec, by hand as well', () => {
    const smallest: TaskSpec = { action: 'a', resources: [], audience: 'spiffe://t/w', scopes: ['s'], params: {}, ttlSeconds: 1 };
    const text = '{"action":"a","audience":"spiffe://t/w","params":{},"resources":[],"scopes":["s"],"ttl_seconds":1}';
    expect(canonicalSpecJson(smallest)).toBe(text);
    expect(taskHash(smallest)).toBe(sha256(text));
  });
});
