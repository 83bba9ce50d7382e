/**
 * RFC 5280 name constraints (4.2.1.10, X509-SVID 4.2): reading the extension and holding a
 * certificate path to it.
 *
 * Both halves live here, apart from certificate.ts and x509svid.ts, because they are one rule
 * read from both ends: @peculiar/x509 gives the extension only as DER, so its reading is a small
 * DER parser of its own, and its checking needs the matching rules for URI hosts and DNS names.
 */
import type { ParsedCertificate } from './certificate.js';
import type { SpiffeId } from './id.js';
import { describeCertificate, X509SvidError } from './x509svid-error.js';

/** The GeneralName CHOICE alternatives of RFC 5280 4.2.1.6, by their ASN.1 names. */
export type GeneralNameType =
  'otherName' | 'rfc822Name' | 'dNSName' | 'x400Address' | 'directoryName' | 'ediPartyName' | 'uniformResourceIdentifier' | 'iPAddress' | 'registeredID';

const GENERAL_NAME_TYPES: readonly GeneralNameType[] = [
  'otherName',
  'rfc822Name',
  'dNSName',
  'x400Address',
  'directoryName',
  'ediPartyName',
  'uniformResourceIdentifier',
  'iPAddress',
  'registeredID',
];

/** One GeneralSubtree of a nameConstraints extension. */
export interface GeneralSubtree {
  readonly type: GeneralNameType;
  /** The name as text for dNSName and uniformResourceIdentifier; `undefined` for the other types. */
  readonly value: string | undefined;
  /** BaseDistance minimum (RFC 5280: MUST be 0) and maximum (MUST be absent). */
  readonly minimum: number;
  readonly maximum: number | undefined;
}

export interface NameConstraints {
  readonly critical: boolean;
  readonly permitted: readonly GeneralSubtree[];
  readonly excluded: readonly GeneralSubtree[];
}

// ---------------------------------------------------------------------------------------------
// Reading the extension

/** One DER TLV: its tag byte and where its contents start and end. */
interface Tlv {
  readonly tag: number;
  readonly start: number;
  readonly end: number;
}

/** Reads the DER TLV at `offset`, which must end by `limit`. Low tag numbers and definite lengths only. */
function readTlv(bytes: Uint8Array, offset: number, limit: number): Tlv {
  const tag = bytes[offset];
  const first = bytes[offset + 1];
  if (tag === undefined || first === undefined || offset + 2 > limit) throw new Error('truncated');
  if ((tag & 0x1f) === 0x1f) throw new Error('high tag numbers are not supported');
  let length = first;
  let start = offset + 2;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n === 0 || n > 3 || start + n > limit) throw new Error('invalid length');
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (bytes[start + i] ?? 0);
    start += n;
  }
  if (start + length > limit) throw new Error('truncated');
  return { tag, start, end: start + length };
}

/** A small non-negative DER INTEGER (BaseDistance). */
function readSmallInteger(bytes: Uint8Array, tlv: Tlv): number {
  const length = tlv.end - tlv.start;
  if (length < 1 || length > 4 || ((bytes[tlv.start] ?? 0) & 0x80) !== 0) throw new Error('invalid BaseDistance');
  let value = 0;
  for (let i = tlv.start; i < tlv.end; i++) value = value * 256 + (bytes[i] ?? 0);
  return value;
}

function readGeneralSubtrees(bytes: Uint8Array, list: Tlv): GeneralSubtree[] {
  const subtrees: GeneralSubtree[] = [];
  for (let offset = list.start; offset < list.end;) {
    const subtree = readTlv(bytes, offset, list.end);
    if (subtree.tag !== 0x30) throw new Error('GeneralSubtree is not a SEQUENCE');
    offset = subtree.end;
    const base = readTlv(bytes, subtree.start, subtree.end);
    const type = (base.tag & 0xc0) === 0x80 ? GENERAL_NAME_TYPES[base.tag & 0x1f] : undefined;
    if (!type) throw new Error(`GeneralName has an unknown tag 0x${base.tag.toString(16)}`);
    let value: string | undefined;
    if (type === 'dNSName' || type === 'uniformResourceIdentifier') {
      const text = bytes.subarray(base.start, base.end);
      if (text.some((b) => b > 0x7e || b < 0x20)) throw new Error(`${type} constraint is not printable IA5String`);
      value = Buffer.from(text).toString('latin1');
    }
    let minimum = 0;
    let maximum: number | undefined;
    let next = base.end;
    if (next < subtree.end) {
      let field = readTlv(bytes, next, subtree.end);
      if (field.tag === 0x80) {
        minimum = readSmallInteger(bytes, field);
        next = field.end;
        field = next < subtree.end ? readTlv(bytes, next, subtree.end) : field;
      }
      if (next < subtree.end) {
        if (field.tag !== 0x81) throw new Error('unexpected field in GeneralSubtree');
        maximum = readSmallInteger(bytes, field);
        next = field.end;
      }
    }
    if (next !== subtree.end) throw new Error('trailing data in GeneralSubtree');
    subtrees.push({ type, value, minimum, maximum });
  }
  return subtrees;
}

/** Parses the DER value of a nameConstraints extension; throws an Error saying what is wrong with it. */
export function parseNameConstraints(der: Uint8Array, critical: boolean): NameConstraints {
  const outer = readTlv(der, 0, der.length);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw new Error('not a single SEQUENCE');
  let permitted: GeneralSubtree[] | undefined;
  let excluded: GeneralSubtree[] | undefined;
  for (let offset = outer.start; offset < outer.end;) {
    const field = readTlv(der, offset, outer.end);
    offset = field.end;
    if (field.tag === 0xa0 && !permitted && !excluded) permitted = readGeneralSubtrees(der, field);
    else if (field.tag === 0xa1 && !excluded) excluded = readGeneralSubtrees(der, field);
    else throw new Error('unexpected field');
  }
  if (!permitted?.length && !excluded?.length) throw new Error('no permitted or excluded subtrees');
  return { critical, permitted: permitted ?? [], excluded: excluded ?? [] };
}

// ---------------------------------------------------------------------------------------------
// Holding a path to them

/**
 * The name constraints of the last certificate of `path` hold for every certificate below it:
 * each URI SAN's host (for a SPIFFE ID, its trust domain) against URI subtrees, each DNS SAN
 * against DNS subtrees. Self-issued intermediates are skipped, as RFC 5280 6.1.3 (b) says. A
 * constraint of any other type cannot be evaluated here and fails closed.
 */
export function checkNameConstraints(path: readonly ParsedCertificate[], role: string, id: SpiffeId): void {
  const constraints = path[path.length - 1]?.nameConstraints;
  if (!constraints) return;
  for (const subtree of [...constraints.permitted, ...constraints.excluded]) {
    if (subtree.type !== 'uniformResourceIdentifier' && subtree.type !== 'dNSName') {
      throw new X509SvidError('name-constraints', `${role} has a ${subtree.type} name constraint, which this verifier cannot evaluate`, id);
    }
    if (subtree.minimum !== 0 || subtree.maximum !== undefined) {
      throw new X509SvidError('name-constraints', `${role} has a name constraint with a minimum or maximum, which RFC 5280 does not allow`, id);
    }
  }
  const ofType = (subtrees: readonly GeneralSubtree[], type: GeneralSubtree['type']) =>
    subtrees.filter((t) => t.type === type).map((t) => (t.value ?? '').toLowerCase());
  const uriPermitted = ofType(constraints.permitted, 'uniformResourceIdentifier');
  const uriExcluded = ofType(constraints.excluded, 'uniformResourceIdentifier');
  const dnsPermitted = ofType(constraints.permitted, 'dNSName');
  const dnsExcluded = ofType(constraints.excluded, 'dNSName');

  for (let i = 0; i < path.length - 1; i++) {
    const cert = path[i] as ParsedCertificate;
    if (i > 0 && !cert.subjectEmpty && cert.subject === cert.issuer) continue;
    const whose = i === 0 ? 'leaf certificate' : `intermediate certificate "${describeCertificate(cert)}"`;
    const check = (
      kind: 'URI' | 'DNS',
      san: string,
      name: string,
      permitted: string[],
      excluded: string[],
      matches: (name: string, constraint: string) => boolean,
    ) => {
      const hit = excluded.find((c) => matches(name, c));
      if (hit !== undefined)
        throw new X509SvidError('name-constraints', `${whose} ${kind} SAN "${san}" is within the excluded ${kind} name constraint "${hit}" of ${role}`, id);
      if (permitted.length && !permitted.some((c) => matches(name, c))) {
        throw new X509SvidError(
          'name-constraints',
          `${whose} ${kind} SAN "${san}" is not within the permitted ${kind} name constraints (${permitted.join(', ')}) of ${role}`,
          id,
        );
      }
    };
    if (uriPermitted.length || uriExcluded.length) {
      for (const uri of cert.uriSans) {
        const host = uriHost(uri);
        if (host === undefined) {
          throw new X509SvidError('name-constraints', `${whose} URI SAN "${uri}" has no host to check against the URI name constraints of ${role}`, id);
        }
        check('URI', uri, host, uriPermitted, uriExcluded, uriHostMatches);
      }
    }
    if (dnsPermitted.length || dnsExcluded.length) {
      for (const dns of cert.dnsSans) check('DNS', dns, dns.toLowerCase(), dnsPermitted, dnsExcluded, dnsNameMatches);
    }
  }
}

/** The lower-cased host of a URI with an authority, or undefined (no authority, empty host, IP literal). */
function uriHost(uri: string): string | undefined {
  const authority = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(uri)?.[1];
  if (authority === undefined) return undefined;
  const host = authority
    .slice(authority.lastIndexOf('@') + 1)
    .replace(/:[0-9]*$/, '')
    .toLowerCase();
  if (host === '' || host.startsWith('[') || /^[0-9.]+$/.test(host)) return undefined;
  return host;
}

/** RFC 5280 4.2.1.10 for URIs: "host.example.com" is that host only; ".example.com" is any host below it, not itself. */
function uriHostMatches(host: string, constraint: string): boolean {
  return constraint.startsWith('.') ? host.endsWith(constraint) && host.length > constraint.length : host === constraint;
}

/** RFC 5280 4.2.1.10 for DNS names: the name itself or any name with labels added on the left; ".example.com" only below it. */
function dnsNameMatches(name: string, constraint: string): boolean {
  if (constraint === '') return true;
  if (constraint.startsWith('.')) return name.endsWith(constraint) && name.length > constraint.length;
  return name === constraint || name.endsWith(`.${constraint}`);
}
