/**
 * ListTasks page tokens: a keyset position tied to the filter it was made for. A token from
 * another filter, or one that is not a token at all, is INVALID_ARGUMENT with one message.
 */
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { decodeCursor, encodeCursor, filterDigest, type ListTasksFilter } from '../../src/tasks/list-cursor.js';

const NOT_A_PAGE_TOKEN = 'page_token is not a page token of this listing (filters must stay the same between pages)';
const FILTER: ListTasksFilter = {
  owner: 'spiffe://example.org/ns/billing/**',
  state: 'ACTIVE',
  audience: 'spiffe://example.org/ns/billing/sa/invoices',
  createdAfter: new Date('2030-01-01T00:00:00Z'),
  createdBefore: new Date('2030-02-01T00:00:00Z'),
};
const LAST = { createdAt: new Date('2030-01-15T10:20:30.456Z'), taskId: 'tsk_AAAAAAAAAAAAAAAAAAAAAAAA' };

function refused(token: string, digest: string): string {
  try {
    decodeCursor(token, digest);
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).kind).toBe('invalid-argument');
    return (err as BrokerError).message;
  }
  throw new Error('the page token was accepted');
}

/** A token with the given JSON content, as encodeCursor would write it. */
const tokenOf = (content: unknown) => Buffer.from(JSON.stringify(content)).toString('base64url');

describe('filterDigest', () => {
  it('is 16 base64url characters, the same for the same filter', () => {
    const digest = filterDigest(FILTER);
    expect(digest).toMatch(/^[A-Za-z0-9_-]{16}$/);
    expect(filterDigest({ ...FILTER, createdAfter: new Date(FILTER.createdAfter!.getTime()) })).toBe(digest);
  });

  it('treats an absent field and an empty one alike (both mean: no filter)', () => {
    expect(filterDigest({})).toBe(filterDigest({ owner: '', state: '', audience: '' }));
  });

  it.each<[string, ListTasksFilter]>([
    ['owner', { ...FILTER, owner: 'spiffe://example.org/ns/ops/**' }],
    ['state', { ...FILTER, state: 'EXPIRED' }],
    ['audience', { ...FILTER, audience: undefined }],
    ['createdAfter', { ...FILTER, createdAfter: new Date('2030-01-01T00:00:00.001Z') }],
    ['createdBefore', { ...FILTER, createdBefore: undefined }],
  ])('changes with %s', (_field, changed) => {
    expect(filterDigest(changed)).not.toBe(filterDigest(FILTER));
  });

  it('does not confuse a value moved from one field to another', () => {
    expect(filterDigest({ owner: 'ACTIVE' })).not.toBe(filterDigest({ state: 'ACTIVE' }));
    expect(filterDigest({ owner: 'a', state: 'b' })).not.toBe(filterDigest({ owner: 'ab' }));
  });
});

describe('page tokens', () => {
  it('round-trip the position to the millisecond, as base64url', () => {
    const digest = filterDigest(FILTER);
    const token = encodeCursor(LAST, digest);
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodeCursor(token, digest)).toEqual(LAST);
  });

  it('are refused for any other filter, however small the change', () => {
    const token = encodeCursor(LAST, filterDigest(FILTER));
    expect(refused(token, filterDigest({ ...FILTER, state: 'EXPIRED' }))).toBe(NOT_A_PAGE_TOKEN);
    expect(refused(token, filterDigest({}))).toBe(NOT_A_PAGE_TOKEN);
    expect(refused(encodeCursor(LAST, filterDigest({})), filterDigest(FILTER))).toBe(NOT_A_PAGE_TOKEN);
  });

  it.each<[string, string]>([
    ['empty', ''],
    ['not base64url JSON', 'not-a-token'],
    ['JSON that is not an object', tokenOf([1, 2, 3])],
    ['another version', tokenOf({ v: 2, c: LAST.createdAt.toISOString(), t: LAST.taskId, f: filterDigest(FILTER) })],
    ['no version', tokenOf({ c: LAST.createdAt.toISOString(), t: LAST.taskId, f: filterDigest(FILTER) })],
    ['a time that is not a date', tokenOf({ v: 1, c: 'yesterday', t: LAST.taskId, f: filterDigest(FILTER) })],
    ['a time that is a number', tokenOf({ v: 1, c: LAST.createdAt.getTime(), t: LAST.taskId, f: filterDigest(FILTER) })],
    ['a task ID that is not a string', tokenOf({ v: 1, c: LAST.createdAt.toISOString(), t: 7, f: filterDigest(FILTER) })],
    ['no filter digest', tokenOf({ v: 1, c: LAST.createdAt.toISOString(), t: LAST.taskId })],
  ])('are refused when %s', (_name, token) => {
    expect(refused(token, filterDigest(FILTER))).toBe(NOT_A_PAGE_TOKEN);
  });

  // A token that decodes to JSON null once made decodeCursor read `null.v` (INTERNAL instead of INVALID_ARGUMENT).
  it('are refused when the JSON is null', () => {
    expect(refused(tokenOf(null), filterDigest(FILTER))).toBe(NOT_A_PAGE_TOKEN);
  });

  it('are refused when a character is changed', () => {
    const digest = filterDigest(FILTER);
    const token = encodeCursor(LAST, digest);
    // Changing the first character breaks the JSON ('{' is what it encodes).
    expect(refused(`${token[0] === 'A' ? 'B' : 'A'}${token.slice(1)}`, digest)).toBe(NOT_A_PAGE_TOKEN);
    // Cutting the token short loses the digest at its end.
    expect(refused(token.slice(0, -8), digest)).toBe(NOT_A_PAGE_TOKEN);
  });

  it('are a position, not a capability: an edited position within the same filter is accepted', () => {
    // Not signed on purpose: the filter is sent again with every page and applied to it, so
    // an edited position can only move within what the caller may list anyway.
    const digest = filterDigest(FILTER);
    const edited = tokenOf({ v: 1, c: '2030-01-20T00:00:00.000Z', t: 'tsk_BBBBBBBBBBBBBBBBBBBBBBBB', f: digest });
    expect(decodeCursor(edited, digest)).toEqual({ createdAt: new Date('2030-01-20T00:00:00.000Z'), taskId: 'tsk_BBBBBBBBBBBBBBBBBBBBBBBB' });
  });
});
