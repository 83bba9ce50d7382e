/**
 * Who is asking: the requester of an MCP request as the broker wants it named (a Requester), read
 * from the SDK's AuthInfo that the HTTP side attached to the request (`req.auth`).
 *
 * Two origins: the peer's X509-SVID on an mTLS connection (its DER chain, leaf first, as the TLS
 * handshake proved the peer holds its key), or a bearer token (the broker verifies it as a subject
 * token). The SDK's own bearer middleware (requireBearerAuth) produces an AuthInfo whose `token`
 * is the bearer token, so it works here too.
 */
import type { IncomingMessage } from 'node:http';
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { Requester } from '../model/task.js';
import { linkedChain } from '../spiffe/peer-chain.js';

/** The key of AuthInfo.extra under which requesterAuthInfo leaves the requester. */
export const REQUESTER_KEY = 'taskBrokerRequester';

/**
 * The requester an AuthInfo carries: the one requesterAuthInfo put there, else its `token` as a
 * subject token; undefined when there is neither (the guard then refuses the request).
 */
export function requesterOf(authInfo: AuthInfo | undefined): Requester | undefined {
  const stored = authInfo?.extra?.[REQUESTER_KEY];
  if (isRequester(stored)) return stored;
  if (authInfo?.token) return { subjectToken: authInfo.token };
  return undefined;
}

/**
 * The AuthInfo for a request to an HTTPS MCP endpoint: the peer's SVID chain when the TLS
 * handshake verified a client certificate, else the `Authorization: Bearer` token, else
 * undefined. Assign it to `req.auth` before `transport.handleRequest(req, res)`.
 *
 * The HTTPS server must not resume TLS sessions (`secureOptions: constants.SSL_OP_NO_TICKET`;
 * Node keeps no session-ID cache unless asked to): a resumed session presents only the peer's
 * leaf, not the chain it came with, and an SVID issued by an intermediate then fails at the
 * broker. Each connection then makes a full handshake and presents its whole chain.
 */
export function requesterAuthInfo(req: IncomingMessage): AuthInfo | undefined {
  const chain = peerChain(req);
  if (chain) {
    const spiffeId = uriSanOf(chain.leaf) ?? 'x509 client';
    return { token: '', clientId: spiffeId, scopes: [], extra: { [REQUESTER_KEY]: { x509SvidChain: chain.der } satisfies Requester } };
  }
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
  if (bearer) return { token: bearer, clientId: 'bearer', scopes: [] };
  return undefined;
}

/**
 * The DER chain of an authorized TLS peer, leaf first, up to (not including) a self-signed
 * certificate: the broker verifies it against its own trust bundles, so the root is not needed.
 * Only a peer the TLS server authorized counts: an unverified certificate is no identity.
 */
function peerChain(req: IncomingMessage): { leaf: PeerCertificate; der: Uint8Array[] } | undefined {
  const socket = req.socket as Partial<TLSSocket>;
  if (typeof socket.getPeerCertificate !== 'function' || socket.authorized !== true) return undefined;
  const leaf: DetailedPeerCertificate = socket.getPeerCertificate(true);
  if (!leaf?.raw) return undefined;
  // On a resumed session (see requesterAuthInfo) Node links no issuer: the leaf alone goes.
  return { leaf, der: linkedChain(leaf, { dropRoot: true }).map((c) => new Uint8Array(c)) };
}

function uriSanOf(cert: PeerCertificate): string | undefined {
  const san = cert.subjectaltname ?? '';
  return /(?:^|,\s*)URI:(spiffe:\/\/[^,\s]+)/.exec(san)?.[1];
}

function isRequester(value: unknown): value is Requester {
  if (!value || typeof value !== 'object') return false;
  const r = value as { x509SvidChain?: unknown; subjectToken?: unknown };
  return (Array.isArray(r.x509SvidChain) && r.x509SvidChain.length > 0) || (typeof r.subjectToken === 'string' && r.subjectToken !== '');
}
