/**
 * Verification of an HTTP request served by node:https or node:http2 (or a framework on them):
 * the bearer token from `Authorization: Bearer …`, the presenter certificate from the TLS
 * socket. Typed structurally, so no HTTP framework is a dependency of the SDK.
 */
import type { TaskTokenClaims } from '../tokens/task-token.js';
import type { TaskTokenVerifier } from './verifier.js';
import type { VerificationResult, VerifyOptions } from './types.js';

/** A TLS socket as far as we use it (tls.TLSSocket fits). */
export interface PeerCertificateSocket {
  getPeerCertificate(detailed: true): { raw?: Buffer } | null | undefined | object;
}

/** An incoming request of node:https (IncomingMessage) or node:http2 (Http2ServerRequest, or the compat request of a framework). */
export interface HttpRequestLike {
  headers: Record<string, string | string[] | undefined>;
  socket?: unknown;
  stream?: { session?: { socket?: unknown } | undefined } | undefined;
}

export interface HttpVerifyOptions {
  operation?: string;
  expectedTaskHash?: string;
  /** Told why a request could not be verified at all (the broker unreachable, a misconfiguration); the client only sees a 503. */
  onError?: (error: unknown) => void;
}

/** The result of a request's verification; `challenge` is the WWW-Authenticate value for a refusal. */
export interface HttpVerification extends VerificationResult {
  challenge?: string;
}

/** Peer certificates (DER) by TLS socket: a connection's certificate is fetched once, and the same Buffer then hits the thumbprint cache. */
const peerCertificates = new WeakMap<object, Buffer | null>();

export async function verifyHttpRequest(verifier: TaskTokenVerifier, req: HttpRequestLike, options: HttpVerifyOptions = {}): Promise<HttpVerification> {
  const token = bearerToken(req.headers.authorization);
  if (token === undefined) return { valid: false, reason: 'MALFORMED', detail: 'no bearer token in the Authorization header', challenge: 'Bearer' };
  const verifyOptions: VerifyOptions = { presenterCertificate: peerCertificate(req), operation: options.operation, expectedTaskHash: options.expectedTaskHash };
  const result = await verifier.verify(token, verifyOptions);
  return result.valid ? result : { ...result, challenge: challengeOf(result) };
}

/** The token of `Authorization: Bearer <token>` (RFC 6750 2.1), or undefined. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  if (typeof header !== 'string') return undefined;
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  return match?.[1];
}

/** The DER of the peer's leaf certificate, from the request's TLS socket (http2: the session's socket). */
export function peerCertificate(req: HttpRequestLike): Buffer | undefined {
  const socket = (req.stream?.session?.socket ?? req.socket) as PeerCertificateSocket | undefined | null;
  if (!socket || typeof socket.getPeerCertificate !== 'function') return undefined;
  let der = peerCertificates.get(socket);
  if (der === undefined) {
    const certificate = socket.getPeerCertificate(true) as { raw?: Buffer } | null | undefined;
    der = certificate?.raw && certificate.raw.length > 0 ? certificate.raw : null;
    // Only a certificate is remembered: a socket without one yet (handshake not done) is asked again.
    if (der) peerCertificates.set(socket, der);
  }
  return der ?? undefined;
}

/** RFC 6750 3: the error and a description without quotes or backslashes. */
function challengeOf(result: VerificationResult): string {
  const description = `${result.reason}: ${result.detail}`.replace(/["\\\r\n]/g, "'").slice(0, 200);
  return `Bearer error="invalid_token", error_description="${description}"`;
}

/**
 * The 503 body the middlewares send when a request cannot be verified now. Fixed text: the
 * error's own message (addresses, connection details) is for the operator (onError), not for
 * an unauthenticated client.
 */
export function unavailableBody(error: unknown, options: HttpVerifyOptions): { error: string; detail: string } {
  options.onError?.(error);
  return { error: 'temporarily_unavailable', detail: 'the token cannot be verified now; retry later' };
}

/** The refusal body the middlewares send. */
export function refusalBody(result: HttpVerification): { error: string; reason: string; detail: string } {
  return { error: 'invalid_token', reason: result.reason, detail: result.detail };
}

export type { TaskTokenClaims };
