/**
 * Gateways: workloads (an MCP server, say) that take requests from other parties and create and
 * serve tasks on their behalf. The gateway is the broker's caller (its own SVID on the
 * connection); the requester proves itself with a credential the gateway forwards and the broker
 * verifies itself: the X509-SVID chain the requester presented to the gateway over mTLS, or a
 * subject token of an identity provider the policy names.
 *
 * A task created through a gateway is the requester's: owned by its SPIFFE ID (x509), or owned by
 * the gateway and bound to the token's subject (the task's principal). Each later request the
 * gateway makes for a requester names it again, and it must be the same one, so a task ID that
 * leaks to another client of the gateway reaches nothing.
 */
import { createHash } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { Principal, Requester } from '../model/task.js';
import { X509SvidError } from '../spiffe/x509svid-error.js';
import { MAX_PRESENTED_CERTIFICATES, verifyX509Svid } from '../spiffe/x509svid.js';
import type { X509BundleSource } from '../spiffe/bundle.js';
import { MAX_SUBJECT_TOKEN_CHARS } from '../policy/subject-tokens.js';
import type { TaskAuthority } from './authority.js';
import type { TaskFacts } from './task-access.js';
import { invalid } from './validation.js';

/** All certificates of a forwarded chain together: an SVID chain is a few KiB. */
export const MAX_REQUESTER_CHAIN_BYTES = 64 * 1024;

/** A requester whose credential the broker verified. */
export type VerifiedRequester =
  { kind: 'x509'; spiffeId: string; trustDomain: string; certThumbprint: string } | { kind: 'subject'; principal: Principal; claims: Record<string, unknown> };

/** A requester as a request carries it: both fields may be there (or neither); requesterArgument decides. */
export interface RequesterInput {
  x509SvidChain?: readonly Uint8Array[] | undefined;
  subjectToken?: string | undefined;
}

/** Checks a requester as sent (exactly one credential, within bounds) before anything is verified. */
export function requesterArgument(requester: RequesterInput | undefined): Requester | undefined {
  if (!requester) return undefined;
  const chain = requester.x509SvidChain ?? [];
  const token = requester.subjectToken ?? '';
  if (chain.length > 0 && token) throw invalid('on_behalf_of: give x509_svid_chain or subject_token, not both');
  if (chain.length === 0 && !token) throw invalid('on_behalf_of: needs x509_svid_chain or subject_token');
  if (token) {
    if (token.length > MAX_SUBJECT_TOKEN_CHARS) throw invalid(`on_behalf_of.subject_token: at most ${MAX_SUBJECT_TOKEN_CHARS} characters`);
    return { subjectToken: token };
  }
  if (chain.length > MAX_PRESENTED_CERTIFICATES) throw invalid(`on_behalf_of.x509_svid_chain: at most ${MAX_PRESENTED_CERTIFICATES} certificates`);
  const bytes = chain.reduce((n, der) => n + der.length, 0);
  if (bytes > MAX_REQUESTER_CHAIN_BYTES) throw invalid(`on_behalf_of.x509_svid_chain: at most ${MAX_REQUESTER_CHAIN_BYTES} bytes together`);
  return { x509SvidChain: [...chain] };
}

/** Verified X509 requesters remembered at most (a gateway serves many, each asking often). */
const MAX_CACHED_CHAINS = 10_000;

/**
 * Verifies a requester's credential: the chain as the broker verifies its own callers (SPIFFE
 * X509-SVID rules, anchored in the bundle of the requester's own trust domain, valid now), or the
 * subject token against the policy's subject issuers. A failure is the BrokerError to answer with.
 *
 * A gateway names the same requester on every poll, so a verified chain is remembered by the
 * SHA-256 of its certificates until it lapses or any trust bundle changes (the bundles'
 * generation), whichever is first: a removed authority stops verifying at once. Failures are not
 * remembered.
 */
export class RequesterVerifier {
  readonly #deps: { bundles: X509BundleSource | undefined; authority: TaskAuthority; now: () => Date };
  readonly #chains = new Map<string, { requester: VerifiedRequester; generation: number; validUntil: number }>();

  constructor(deps: { bundles: X509BundleSource | undefined; authority: TaskAuthority; now: () => Date }) {
    this.#deps = deps;
  }

  async verify(requester: Requester): Promise<VerifiedRequester> {
    if (requester.subjectToken !== undefined) {
      const verified = await this.#deps.authority.verifySubject(requester.subjectToken);
      if (!verified.ok) throw new BrokerError(verified.kind, `on_behalf_of.subject_token refused: ${verified.reason}`);
      return { kind: 'subject', principal: verified.principal, claims: verified.claims };
    }
    const bundles = this.#deps.bundles;
    if (!bundles) throw new BrokerError('permission-denied', 'on_behalf_of.x509_svid_chain refused: this broker has no trust bundles to verify it with');
    const now = this.#deps.now();
    const key = chainKey(requester.x509SvidChain);
    const generation = bundles.generation;
    const known = this.#chains.get(key);
    if (known && known.generation === generation && now.getTime() < known.validUntil) {
      this.#chains.delete(key);
      this.#chains.set(key, known);
      return known.requester;
    }
    try {
      const svid = verifyX509Svid(requester.x509SvidChain, bundles, { now });
      const verified: VerifiedRequester = {
        kind: 'x509',
        spiffeId: svid.spiffeId.toString(),
        trustDomain: svid.spiffeId.trustDomain,
        certThumbprint: svid.leaf.thumbprint,
      };
      this.#chains.delete(key);
      this.#chains.set(key, { requester: verified, generation, validUntil: svid.validUntil.getTime() });
      if (this.#chains.size > MAX_CACHED_CHAINS) this.#chains.delete(this.#chains.keys().next().value as string);
      return verified;
    } catch (err) {
      if (err instanceof X509SvidError) {
        const kind = err.failure === 'malformed' || err.failure === 'no-certificate' ? 'invalid-argument' : 'permission-denied';
        throw new BrokerError(kind, `on_behalf_of.x509_svid_chain refused: ${err.message.replace(/^x509svid: /, '')}`);
      }
      throw err;
    }
  }
}

function chainKey(chain: readonly Uint8Array[]): string {
  const hash = createHash('sha256');
  for (const der of chain) {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(der.length);
    hash.update(length).update(der);
  }
  return hash.digest('base64url');
}

/** The requester as the audit trail names it. */
export function requesterDetails(requester: VerifiedRequester): Record<string, unknown> {
  return requester.kind === 'x509' ? { spiffe_id: requester.spiffeId, cert_thumbprint: requester.certThumbprint } : { principal: requester.principal };
}

/**
 * Why `requester` is not the one the task was created for (undefined: it is). With `session`, a
 * subject requester must also be of the task principal's session.
 */
export function requesterMismatch(facts: TaskFacts, requester: VerifiedRequester, session: boolean): string | undefined {
  const other = 'the requester is not the one the task was created for';
  if (requester.kind === 'x509') {
    // A task created for an X509 requester is owned by it, never by its gateway (that one is a
    // subject requester's task, owned by the gateway: no certificate names its principal).
    const createdFor = requester.spiffeId === facts.ownerSpiffeId && facts.ownerSpiffeId !== facts.gateway && facts.principal === null;
    return createdFor ? undefined : other;
  }
  const p = facts.principal;
  if (!p || facts.ownerSpiffeId !== facts.gateway || p.iss !== requester.principal.iss || p.sub !== requester.principal.sub) return other;
  if (session && (p.sid ?? null) !== (requester.principal.sid ?? null)) return "the requester's subject token is of another session than the task's";
  return undefined;
}
