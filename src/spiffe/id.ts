/**
 * SPIFFE IDs, parsed and validated per the SPIFFE ID specification (SPIFFE-ID.md).
 * Every rejection names the rule it broke.
 */

export type SpiffeIdRule =
  | 'empty'
  | 'scheme'
  | 'trust-domain-missing'
  | 'trust-domain-chars'
  | 'trust-domain-length'
  | 'user-info'
  | 'port'
  | 'query'
  | 'fragment'
  | 'path-empty-segment'
  | 'path-dot-segment'
  | 'path-trailing-slash'
  | 'path-chars'
  | 'path-percent-encoded'
  | 'too-long';

const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_CHARS = 255;
const SCHEME_PREFIX = 'spiffe://';

function echo(input: string): string {
  return input.length > 128 ? `${input.slice(0, 128)}…` : input;
}

export class SpiffeIdError extends Error {
  override readonly name = 'SpiffeIdError';
  constructor(
    readonly rule: SpiffeIdRule,
    detail: string,
    readonly input: string,
  ) {
    super(`spiffeid: ${detail} (in "${echo(input)}")`);
  }
}

const isTrustDomainChar = (c: number) => (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x5f;
const isPathChar = (c: number) => isTrustDomainChar(c) || (c >= 0x41 && c <= 0x5a);

function validateTrustDomain(td: string, input: string): void {
  if (td.length === 0) throw new SpiffeIdError('trust-domain-missing', 'trust domain is missing', input);
  if (td.includes('@')) throw new SpiffeIdError('user-info', 'user info is not allowed in a SPIFFE ID', input);
  if (td.includes(':')) throw new SpiffeIdError('port', 'a port is not allowed in a SPIFFE ID', input);
  if (td.includes('%')) throw new SpiffeIdError('trust-domain-chars', 'percent-encoding is not allowed in the trust domain', input);
  for (let i = 0; i < td.length; i++) {
    if (!isTrustDomainChar(td.charCodeAt(i))) {
      throw new SpiffeIdError('trust-domain-chars', 'trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores', input);
    }
  }
  if (td.length > MAX_TRUST_DOMAIN_CHARS) {
    throw new SpiffeIdError('trust-domain-length', `trust domain is longer than ${MAX_TRUST_DOMAIN_CHARS} characters`, input);
  }
}

function validatePath(path: string, input: string): void {
  if (path === '') return;
  const segments = path.slice(1).split('/');
  segments.forEach((segment, i) => {
    if (segment === '') {
      if (i === segments.length - 1) throw new SpiffeIdError('path-trailing-slash', 'path cannot have a trailing slash', input);
      throw new SpiffeIdError('path-empty-segment', 'path cannot contain empty segments', input);
    }
    if (segment === '.' || segment === '..') {
      throw new SpiffeIdError('path-dot-segment', "path cannot contain dot segments ('.' or '..')", input);
    }
    for (let j = 0; j < segment.length; j++) {
      const c = segment.charCodeAt(j);
      if (c === 0x25) throw new SpiffeIdError('path-percent-encoded', 'percent-encoded characters are not allowed in the path', input);
      if (!isPathChar(c)) {
        throw new SpiffeIdError('path-chars', 'path segment characters are limited to letters, numbers, dots, dashes, and underscores', input);
      }
    }
  });
}

export class SpiffeId {
  readonly #segments: readonly string[];

  private constructor(
    readonly trustDomain: string,
    readonly path: string,
  ) {
    this.#segments = path === '' ? [] : path.slice(1).split('/');
  }

  get segments(): readonly string[] {
    return this.#segments;
  }

  static parse(input: string): SpiffeId {
    if (input === '') throw new SpiffeIdError('empty', 'SPIFFE ID is empty', input);
    if (Buffer.byteLength(input, 'utf8') > MAX_ID_BYTES) {
      throw new SpiffeIdError('too-long', `SPIFFE ID is longer than ${MAX_ID_BYTES} bytes`, input);
    }
    if (!input.startsWith(SCHEME_PREFIX)) {
      throw new SpiffeIdError('scheme', "scheme is missing or invalid: must be 'spiffe://' in lower case", input);
    }
    const rest = input.slice(SCHEME_PREFIX.length);
    if (rest.includes('#')) throw new SpiffeIdError('fragment', 'a fragment is not allowed in a SPIFFE ID', input);
    if (rest.includes('?')) throw new SpiffeIdError('query', 'a query is not allowed in a SPIFFE ID', input);
    const slash = rest.indexOf('/');
    const td = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    validateTrustDomain(td, input);
    validatePath(path, input);
    return new SpiffeId(td, path);
  }

  static fromParts(trustDomain: string, path: string): SpiffeId {
    return SpiffeId.parse(`${SCHEME_PREFIX}${trustDomain}${path}`);
  }

  toString(): string {
    return `${SCHEME_PREFIX}${this.trustDomain}${this.path}`;
  }

  equals(other: SpiffeId): boolean {
    return this.trustDomain === other.trustDomain && this.path === other.path;
  }

  isMemberOf(trustDomain: string): boolean {
    return this.trustDomain === trustDomain;
  }
}

export function parseSpiffeId(input: string): SpiffeId {
  return SpiffeId.parse(input);
}

/** Accepts "example.org" or "spiffe://example.org" and returns "example.org". */
export function parseTrustDomain(input: string): string {
  const id = SpiffeId.parse(input.startsWith(SCHEME_PREFIX) ? input : `${SCHEME_PREFIX}${input}`);
  if (id.path !== '') {
    throw new SpiffeIdError('path-chars', 'a trust domain name cannot have a path', input);
  }
  return id.trustDomain;
}

export function isValidSpiffeId(input: string): boolean {
  try {
    SpiffeId.parse(input);
    return true;
  } catch {
    return false;
  }
}
