/**
 * The task domain's input validation (src/tasks/validation.ts): for each check, what passes,
 * what is refused, and the exact INVALID_ARGUMENT message a caller reads.
 */
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { newTaskId } from '../../src/tasks/ids.js';
import { DEFAULT_LIMITS, MAX_PAGE_SIZE } from '../../src/tasks/limits.js';
import {
  freeText,
  idempotencyKeyArgument,
  pageSizeArgument,
  selectorArgument,
  stateFilterArgument,
  taskIdArgument,
  tokenArgument,
  tokenTtlArgument,
  validateScopes,
  validateTaskSpec,
  type TaskSpecInput,
} from '../../src/tasks/validation.js';
import { MAX_TOKEN_LENGTH } from '../../src/tokens/task-token.js';

const AUDIENCE = 'spiffe://example.org/ns/billing/sa/invoices';

/** The INVALID_ARGUMENT message `run` fails with. */
function refused(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).kind).toBe('invalid-argument');
    return (err as BrokerError).message;
  }
  throw new Error('expected INVALID_ARGUMENT, the value was accepted');
}

describe('freeText', () => {
  it.each(['', 'done', 'line one\nline two\r\n\tindented', 'é€ unicode', 'x'.repeat(1024)])('accepts %j', (text) => {
    expect(freeText(text, 'outcome')).toBe(text);
  });

  it.each(['\x00', 'a\x07b', '\x0b', '\x0c', 'esc\x1b[0m', '\x1f', 'del\x7f'])('refuses the control character in %j', (text) => {
    expect(refused(() => freeText(text, 'reason'))).toBe('reason: control characters are not allowed');
  });

  it('refuses more than 1024 characters, checked before the characters themselves', () => {
    expect(refused(() => freeText('x'.repeat(1025), 'comment'))).toBe('comment: at most 1024 characters');
    expect(refused(() => freeText(`\x00${'x'.repeat(1024)}`, 'comment'))).toBe('comment: at most 1024 characters');
  });
});

describe('taskIdArgument', () => {
  it('accepts the IDs the broker makes', () => {
    const id = newTaskId();
    expect(taskIdArgument(id)).toBe(id);
    expect(taskIdArgument('tsk_Az09-_Az09-_Az09-_Az09-_')).toBe('tsk_Az09-_Az09-_Az09-_Az09-_');
  });

  it.each([
    '',
    'tsk_',
    'tsk_AAAAAAAAAAAAAAAAAAAAAAA',
    'tsk_AAAAAAAAAAAAAAAAAAAAAAAAA',
    'TSK_AAAAAAAAAAAAAAAAAAAAAAAA',
    'tsk_AAAAAAAAAAAA+AAAAAAAAAAA',
    'tsk_AAAAAAAAAAAAAAAAAAAAAAAA\n',
    'task-1',
  ])('refuses %j', (id) => {
    expect(refused(() => taskIdArgument(id))).toBe('task_id is not a task ID');
  });
});

describe('idempotencyKeyArgument', () => {
  it('treats absent and empty as no key', () => {
    expect(idempotencyKeyArgument(undefined)).toBeUndefined();
    expect(idempotencyKeyArgument('')).toBeUndefined();
  });

  it.each(['k', 'retry 1 of order/42', 'ü', 'k'.repeat(128)])('accepts %j', (key) => {
    expect(idempotencyKeyArgument(key)).toBe(key);
  });

  it.each(['k'.repeat(129), 'tab\there', 'line\n', '\x00', 'del\x7f'])('refuses %j', (key) => {
    expect(refused(() => idempotencyKeyArgument(key))).toBe('idempotency_key: 1 to 128 printable characters');
  });
});

describe('tokenArgument', () => {
  it('accepts up to MAX_TOKEN_LENGTH characters, whatever they are', () => {
    expect(MAX_TOKEN_LENGTH).toBe(16_384);
    expect(tokenArgument('')).toBe('');
    expect(tokenArgument('x'.repeat(MAX_TOKEN_LENGTH))).toHaveLength(MAX_TOKEN_LENGTH);
  });

  it('refuses one more', () => {
    expect(refused(() => tokenArgument('x'.repeat(MAX_TOKEN_LENGTH + 1)))).toBe('token: at most 16384 characters');
  });
});

describe('tokenTtlArgument', () => {
  it.each([undefined, 1, 300, 86_400 * 365])('accepts %j (the caps apply later)', (ttl) => {
    expect(tokenTtlArgument(ttl)).toBe(ttl);
  });

  it.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])('refuses %j', (ttl) => {
    expect(refused(() => tokenTtlArgument(ttl))).toBe('ttl must be a positive whole number of seconds');
  });
});

describe('pageSizeArgument', () => {
  it('takes the fallback for absent or 0, and 1 to max as given', () => {
    expect(pageSizeArgument(undefined, 50, MAX_PAGE_SIZE)).toBe(50);
    expect(pageSizeArgument(0, 50, MAX_PAGE_SIZE)).toBe(50);
    expect(pageSizeArgument(1, 50, MAX_PAGE_SIZE)).toBe(1);
    expect(pageSizeArgument(MAX_PAGE_SIZE, 50, MAX_PAGE_SIZE)).toBe(MAX_PAGE_SIZE);
  });

  it.each([MAX_PAGE_SIZE + 1, -1, 2.5, Number.NaN])('refuses %j', (size) => {
    expect(refused(() => pageSizeArgument(size, 50, MAX_PAGE_SIZE))).toBe('page_size: 1 to 500');
  });

  it('names the max it was given', () => {
    expect(refused(() => pageSizeArgument(1001, 100, 1000))).toBe('page_size: 1 to 1000');
  });
});

describe('stateFilterArgument', () => {
  it.each<[string | undefined, string | undefined]>([
    [undefined, undefined],
    ['', undefined],
    ['TASK_STATE_UNSPECIFIED', undefined],
    ['ACTIVE', 'ACTIVE'],
    ['TASK_STATE_PENDING_APPROVAL', 'PENDING_APPROVAL'],
    ['expired', 'EXPIRED'],
  ])('%j filters by %j', (value, state) => {
    expect(stateFilterArgument(value)).toBe(state);
  });

  it('refuses an unknown state, quoting at most 64 characters of it', () => {
    expect(refused(() => stateFilterArgument('DONE'))).toBe('state: unknown task state "DONE"');
    expect(refused(() => stateFilterArgument('x'.repeat(100)))).toBe(`state: unknown task state "${'x'.repeat(64)}"… (36 more characters)`);
  });
});

describe('selectorArgument', () => {
  it('an exact ID: a matcher for it and an anchored regex with the dots escaped', () => {
    const { matcher, regex } = selectorArgument('owner', 'spiffe://example.org/ns/a/sa/b');
    expect(regex).toBe('^spiffe://example\\.org/ns/a/sa/b$');
    expect(matcher.matches(SpiffeId.parse('spiffe://example.org/ns/a/sa/b'))).toBe(true);
    expect(matcher.matches(SpiffeId.parse('spiffe://example.org/ns/a/sa/bb'))).toBe(false);
  });

  it('a pattern: the regex PostgreSQL filters by selects what the matcher matches', () => {
    const { matcher, regex } = selectorArgument('audience', 'spiffe://example.org/ns/*/sa/**');
    expect(regex).toBe('^spiffe://example\\.org/ns/[^/]+/sa/[^/]+(/[^/]+)*$');
    const ids = [
      'spiffe://example.org/ns/a/sa/b',
      'spiffe://example.org/ns/a/sa/b/c',
      'spiffe://example.org/ns/a/sa',
      'spiffe://example.org/ns/a/b/sa/c',
      'spiffe://examplexorg/ns/a/sa/b',
    ];
    for (const id of ids) expect(new RegExp(regex).test(id), id).toBe(matcher.matches(SpiffeId.parse(id)));
    expect(ids.filter((id) => new RegExp(regex).test(id))).toEqual(['spiffe://example.org/ns/a/sa/b', 'spiffe://example.org/ns/a/sa/b/c']);
  });

  it.each<[string, string]>([
    ['spiffe://*/ns/a', 'owner: spiffe id pattern "spiffe://*/ns/a": the trust domain cannot contain a wildcard; trust is granted per trust domain'],
    [
      'spiffe://example.org/ns/billing-*',
      `owner: spiffe id pattern "spiffe://example.org/ns/billing-*": "billing-*": a wildcard must be a whole segment ('*' or a trailing '**')`,
    ],
    ['spiffe://example.org/**/a', `owner: spiffe id pattern "spiffe://example.org/**/a": '**' is only allowed as the last segment`],
    [
      'https://example.org/a',
      `owner: spiffe id pattern "https://example.org/a": spiffeid: scheme is missing or invalid: must be 'spiffe://' in lower case (in "https://example.org/a")`,
    ],
  ])('refuses %j', (selector, message) => {
    expect(refused(() => selectorArgument('owner', selector))).toBe(message);
  });
});

describe('validateScopes', () => {
  it('accepts RFC 6749 scope tokens, none or up to 32 of them', () => {
    expect(() => validateScopes('scopes', [])).not.toThrow();
    expect(() => validateScopes('scopes', ['invoices:read', '!#$[]~', 's'.repeat(128)])).not.toThrow();
    expect(() =>
      validateScopes(
        'scopes',
        Array.from({ length: 32 }, (_, i) => `s${i}`),
      ),
    ).not.toThrow();
  });

  const TOKEN_RULE = `is not a valid scope token (RFC 6749: printable ASCII without space, '"' or '\\', at most 128 characters)`;
  it.each<[string, string]>([
    ['a b', `scopes: "a b" ${TOKEN_RULE}`],
    ['', `scopes: "" ${TOKEN_RULE}`],
    ['say"hi"', `scopes: "say"hi"" ${TOKEN_RULE}`],
    ['back\\slash', `scopes: "back\\slash" ${TOKEN_RULE}`],
    ['é', `scopes: "é" ${TOKEN_RULE}`],
    ['s'.repeat(129), `scopes: "${'s'.repeat(64)}" ${TOKEN_RULE}`],
  ])('refuses the scope %j', (scope, message) => {
    expect(refused(() => validateScopes('scopes', ['ok', scope]))).toBe(message);
  });

  it('refuses more than 32 scopes and a repeated one', () => {
    expect(
      refused(() =>
        validateScopes(
          'spec.scopes',
          Array.from({ length: 33 }, (_, i) => `s${i}`),
        ),
      ),
    ).toBe('spec.scopes: at most 32 scopes');
    expect(refused(() => validateScopes('spec.scopes', ['a', 'b', 'a']))).toBe('spec.scopes: "a" is listed twice');
  });
});

describe('validateTaskSpec', () => {
  const input = (overrides: Partial<TaskSpecInput> = {}): TaskSpecInput => ({
    action: 'invoice.export',
    resources: ['invoices/2030-01'],
    audience: AUDIENCE,
    scopes: ['invoices:read'],
    params: { format: 'csv' },
    ttlSeconds: 600,
    ...overrides,
  });

  it('returns the spec, copying the lists, and takes the default ttl when none is given', () => {
    const given = input({ ttlSeconds: undefined });
    const spec = validateTaskSpec(given, DEFAULT_LIMITS);
    expect(spec).toEqual({ ...given, ttlSeconds: DEFAULT_LIMITS.defaultTaskTtlSeconds });
    expect(spec.resources).not.toBe(given.resources);
    expect(spec.scopes).not.toBe(given.scopes);
    expect(validateTaskSpec(input({ ttlSeconds: undefined }), { defaultTaskTtlSeconds: 60, maxTaskTtlSeconds: 120 }).ttlSeconds).toBe(60);
  });

  it('accepts the bounds themselves', () => {
    const atBounds = input({
      action: `a${'b'.repeat(127)}`,
      resources: Array.from({ length: 64 }, (_, i) => `${i}`.padEnd(512, 'r')),
      params: { k: 'x'.repeat(16_384 - '{"k":""}'.length) },
      ttlSeconds: DEFAULT_LIMITS.maxTaskTtlSeconds,
    });
    expect(validateTaskSpec(atBounds, DEFAULT_LIMITS).ttlSeconds).toBe(86_400);
    expect(validateTaskSpec(input({ resources: [], action: 'A0._:/-' }), DEFAULT_LIMITS).resources).toEqual([]);
  });

  const ACTION_RULE = 'spec.action: 1 to 128 characters, letters, digits and . _ : / - (starting with a letter or digit)';
  it.each<[string, Partial<TaskSpecInput>, string]>([
    ['no action', { action: '' }, 'spec.action is required'],
    ['an action starting with a dot', { action: '.export' }, ACTION_RULE],
    ['an action with a space', { action: 'invoice export' }, ACTION_RULE],
    ['an action of 129 characters', { action: `a${'b'.repeat(128)}` }, ACTION_RULE],
    ['65 resources', { resources: Array.from({ length: 65 }, (_, i) => `r${i}`) }, 'spec.resources: at most 64'],
    ['an empty resource', { resources: ['a', ''] }, 'spec.resources: each resource is 1 to 512 characters'],
    ['a resource of 513 characters', { resources: ['r'.repeat(513)] }, 'spec.resources: each resource is 1 to 512 characters'],
    ['a tab in a resource', { resources: ['a\tb'] }, 'spec.resources: control characters are not allowed'],
    ['a repeated resource', { resources: ['a', 'b', 'a'] }, 'spec.resources: "a" is listed twice'],
    ['no audience', { audience: '' }, 'spec.audience is required: the SPIFFE ID of the service the tokens are for'],
    [
      'an audience that is a URL',
      { audience: 'https://billing.example.org' },
      `spec.audience: spiffeid: scheme is missing or invalid: must be 'spiffe://' in lower case (in "https://billing.example.org")`,
    ],
    [
      'an audience with a port',
      { audience: 'spiffe://example.org:443/api' },
      'spec.audience: spiffeid: a port is not allowed in a SPIFFE ID (in "spiffe://example.org:443/api")',
    ],
    ['no scopes', { scopes: [] }, 'spec.scopes: at least one scope is required'],
    [
      'a scope with a space',
      { scopes: ['invoices read'] },
      `spec.scopes: "invoices read" is not a valid scope token (RFC 6749: printable ASCII without space, '"' or '\\', at most 128 characters)`,
    ],
    ['params over 16 KiB of canonical JSON', { params: { k: 'é'.repeat(8189) } }, 'spec.params: at most 16384 bytes of canonical JSON (got 16386)'],
    ['a ttl of 0', { ttlSeconds: 0 }, 'spec.ttl must be a positive whole number of seconds'],
    ['a fractional ttl', { ttlSeconds: 1.5 }, 'spec.ttl must be a positive whole number of seconds'],
    ['a ttl above the maximum', { ttlSeconds: 86_401 }, 'spec.ttl: at most 86400s (requested 86401s)'],
  ])('refuses %s', (_name, overrides, message) => {
    expect(refused(() => validateTaskSpec(input(overrides), DEFAULT_LIMITS))).toBe(message);
  });

  it('checks the fields in contract order: the first problem is the one reported', () => {
    expect(refused(() => validateTaskSpec(input({ action: '', audience: '', scopes: [], ttlSeconds: 0 }), DEFAULT_LIMITS))).toBe('spec.action is required');
    expect(refused(() => validateTaskSpec(input({ audience: '', scopes: [], ttlSeconds: 0 }), DEFAULT_LIMITS))).toMatch(/^spec\.audience/);
    expect(refused(() => validateTaskSpec(input({ scopes: [], ttlSeconds: 0 }), DEFAULT_LIMITS))).toMatch(/^spec\.scopes/);
  });

  it('bounds the default ttl by the maximum too', () => {
    expect(refused(() => validateTaskSpec(input({ ttlSeconds: undefined }), { defaultTaskTtlSeconds: 900, maxTaskTtlSeconds: 600 }))).toBe(
      'spec.ttl: at most 600s (requested 900s)',
    );
  });
});
