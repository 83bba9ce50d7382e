/**
 * The verifier SDK's vocabulary: what it needs of the broker (a narrow, structural slice of
 * BrokerClient, so a BrokerClient or a test double fits), its options, and its answers.
 */
import type { X509Certificate } from 'node:crypto';
import type { GetSigningKeysResponse__Output } from '../gen/taskbroker/v1/GetSigningKeysResponse.js';
import type { ReportTokenUseResponse__Output } from '../gen/taskbroker/v1/ReportTokenUseResponse.js';
import type { TokenUse } from '../gen/taskbroker/v1/TokenUse.js';
import type { VerifyTokenRequest } from '../gen/taskbroker/v1/VerifyTokenRequest.js';
import type { VerifyTokenResponse__Output } from '../gen/taskbroker/v1/VerifyTokenResponse.js';
import type { WatchRevocationsResponse__Output } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
import type { WhoAmIResponse__Output } from '../gen/taskbroker/v1/WhoAmIResponse.js';
import type { PrincipalClaim, TaskTokenClaims } from '../tokens/task-token.js';

/** The revocation stream as the verifier uses it: grpc-js's ClientReadableStream fits, and so does an EventEmitter with cancel(). */
export interface RevocationStream {
  on(event: 'data', listener: (message: WatchRevocationsResponse__Output) => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  cancel(): void;
}

/** What the verifier calls on the broker: BrokerClient's methods of these names (BrokerClient is assignable). */
export interface VerifierBroker {
  getSigningKeys(): Promise<GetSigningKeysResponse__Output>;
  watchRevocations(afterCursor: string): RevocationStream;
  reportTokenUse(uses: TokenUse[]): Promise<ReportTokenUseResponse__Output>;
  verifyToken(request: VerifyTokenRequest): Promise<VerifyTokenResponse__Output>;
  whoAmI(): Promise<WhoAmIResponse__Output>;
}

/**
 * Why a token is or is not valid: VerifyToken's reasons, plus REVOCATION_STATUS_UNKNOWN (the
 * token is otherwise valid, but the verifier cannot say it is not revoked, or has uses left: its
 * revocation data is stale, or the broker it must ask could not be asked, or verifySync was asked
 * about a token only the broker can accept). USES_EXHAUSTED comes from the broker alone: a
 * use-limited token (max_uses) already accepted that many times.
 */
export const VERIFIER_REASONS = [
  'VALID',
  'MALFORMED',
  'BAD_SIGNATURE',
  'EXPIRED',
  'REVOKED',
  'TASK_NOT_ACTIVE',
  'AUDIENCE_MISMATCH',
  'BINDING_MISMATCH',
  'TASK_HASH_MISMATCH',
  'PRESENTER_REQUIRED',
  'REVOCATION_STATUS_UNKNOWN',
  'USES_EXHAUSTED',
] as const;
export type VerifierReason = (typeof VERIFIER_REASONS)[number];

export interface VerificationResult {
  valid: boolean;
  reason: VerifierReason;
  /** Human-readable; never contains the token. */
  detail: string;
  /** The token's claims when its signature verified (also on most refusals); absent otherwise. */
  claims?: TaskTokenClaims;
  /**
   * With the claims (token contract v2, empty or absent for older tokens): the delegators of a
   * delegated task, most recent first (the act chain: actors[0] delegated to the token's sub).
   */
  actors?: readonly string[];
  /** A delegated task's parent (the parent_task_id claim). */
  parentTaskId?: string;
  /** The subject behind the task (the principal claim: iss, sub and, when bound to a session, sid). */
  principal?: PrincipalClaim;
  /** A use-limited token's max_uses claim: such a token is only ever accepted by VerifyToken, online. */
  maxUses?: number;
  /** For a use-limited token the broker accepted: the uses this acceptance left (0: it was the last). */
  usesLeft?: number;
}

/** The certificate of the party that presented the token: DER, a parsed certificate, PEM, or its RFC 8705 x5t#S256. */
export type PresenterCertificate = Buffer | Uint8Array | X509Certificate | string | { thumbprint: string };

export interface VerifyOptions {
  /** Mandatory in effect: without it the answer is PRESENTER_REQUIRED. */
  presenterCertificate?: PresenterCertificate | undefined;
  /** When given, the token's task_hash must equal it (TASK_HASH_MISMATCH otherwise). */
  expectedTaskHash?: string | undefined;
  /** Recorded in the access report; 1 to 128 of letters, digits and . _ : / -; default 'verify'. */
  operation?: string | undefined;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type VerifierLogger = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

/** Time and timers, injectable so tests drive them. */
export interface VerifierClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ReportingOptions {
  /** Default 1000. */
  flushIntervalMs?: number;
  /** A flush starts as soon as this many are queued; default 256 (the broker takes at most 1024 per call). */
  maxBatch?: number;
  /** Reports queued at most; beyond, the oldest are dropped (counted and logged); default 10_000. */
  maxBuffered?: number;
  /** Retry backoff after a failed flush: first delay and cap; default 1000 and 30_000. */
  retryInitialMs?: number;
  retryMaxMs?: number;
}

export interface VerifierOptions {
  broker: VerifierBroker;
  /** The verifier's own SPIFFE ID, which tokens must name as aud; default: whoAmI().spiffeId. */
  audience?: string;
  /** Where the keys come from: 'broker' (GetSigningKeys over mTLS, the default) or a JWKS URL, https or http (then `issuer` is required). */
  jwks?: URL | string;
  /** The tokens' iss; default: GetSigningKeys' issuer. Required with a JWKS URL. */
  issuer?: string;
  /**
   * 'stream': WatchRevocations; 'online': VerifyToken confirms each offline-valid token; 'none': blind to revocation until exp.
   * Whatever the mode, a token with a max_uses claim is verified online (the broker counts its uses), and refused when the broker cannot be asked.
   */
  revocations: 'stream' | 'online' | 'none';
  /** Leeway for exp and nbf; default 5, at most 60. */
  clockToleranceSeconds?: number;
  /** How long without a stream message the revocation set stays trusted; default 30_000. */
  maxStalenessMs?: number;
  /** With stale revocation data: refuse (REVOCATION_STATUS_UNKNOWN, the default) or ask VerifyToken. */
  onStale?: 'fail-closed' | 'online';
  /** Key refreshes (on an unknown kid) at most this often; default 10_000. */
  keyRefreshMinIntervalMs?: number;
  /**
   * Keys older than this are fetched again, in the background, at the next verification (so a key
   * the broker pre-publishes is known before its first token); default 300_000. The broker's
   * signing-key pre-publication period (serve --key-pre-publication) must cover it.
   */
  keyMaxAgeMs?: number;
  /** Access reports (ReportTokenUse); false: none. Default: on, with the defaults of ReportingOptions. */
  reporting?: ReportingOptions | false;
  /** Stream reconnect backoff: first delay and cap; default 250 and 10_000, with jitter. */
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  logger?: VerifierLogger;
  /** For tests: time and timers. */
  clock?: VerifierClock;
}

export interface VerifierStats {
  verified: Record<VerifierReason, number>;
  reports: { sent: number; buffered: number; dropped: number; failedFlushes: number };
  keyRefreshes: number;
  streamReconnects: number;
  /** Verifications that met stale revocation data. */
  stale: number;
  /** Whether the revocation data is stale now ('stream' only). */
  revocationsStale: boolean;
}
