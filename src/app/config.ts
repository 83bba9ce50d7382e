/**
 * The broker's configuration: one typed value that `serve`, `dev` and the tests start a broker
 * from, with every default written once, here. `serve` maps its flags and environment variables
 * onto it (and shows these defaults in its help); `dev` fills in what its demo needs.
 */
import { readFileSync } from 'node:fs';
import { DEFAULT_ADMISSION_LIMITS, type AdmissionLimits } from '../api/admission.js';
import { openFilesLimit } from '../observability/capacity-checks.js';
import { DEFAULT_POOL } from '../store/database.js';
import type { BundleFile } from '../spiffe/bundle-files.js';
import { DEFAULT_LIMITS, type LifecycleLimits } from '../tasks/limits.js';
import { DEFAULT_PRE_PUBLICATION_MS } from '../tokens/key-publication.js';
import type { TokenAlg } from '../tokens/keyring.js';
import { DEFAULT_CONNECTION_LIMITS, type ConnectionLimits } from '../transport/svid-server.js';

export interface ListenAddress {
  host: string;
  /** 0: any free port. */
  port: number;
}

/** The broker's SVID (certificate chain and key) and the trust bundles of its callers, from files reloaded on change. */
export interface FileIdentityConfig {
  kind: 'files';
  svidCertPath: string;
  svidKeyPath: string;
  bundles: BundleFile[];
}

/** The broker's SVID and every trust bundle from a SPIRE agent, followed as they rotate. */
export interface WorkloadApiConfig {
  kind: 'workload-api';
  /** unix:///path/to/agent.sock (or unix:/path, tcp://IP:PORT). */
  address: string;
  /** How long to wait at start for the first SVID. */
  timeoutMs: number;
  /** Serve with the SVID for this ID instead of the agent's default (first) one. */
  spiffeId?: string;
}

export type IdentityConfig = FileIdentityConfig | WorkloadApiConfig;

export interface DatabaseConfig {
  /** postgres://…; absent: embedded PGlite in dataDir. */
  url?: string;
  dataDir: string;
  /** How long to keep trying to reach PostgreSQL at start, with backoff; 0: one attempt. */
  waitMs: number;
  /** PostgreSQL connections per replica. */
  poolSize: number;
  /** How long a call may wait for a database connection before it fails with UNAVAILABLE. */
  poolTimeoutMs: number;
  statementTimeoutMs: number;
}

export interface BrokerConfig {
  /** The gRPC (mTLS) listener. */
  listen: ListenAddress;
  /** The HTTP listener (JWKS, /healthz, /readyz, /metrics); absent: none. */
  http?: ListenAddress;
  identity: IdentityConfig;
  /** Policy file, reloaded on change; absent: every task and admin request is denied. */
  policyPath?: string;
  database: DatabaseConfig;
  /** Apply pending migrations at start; otherwise refuse to start while any is pending. */
  migrate: boolean;
  /** The key-encryption key of the signing keys at rest: exactly one of a file or the base64 value. */
  kek: { file?: string; base64?: string };
  tokenAlg: TokenAlg;
  /** Token `iss`; absent: the broker's own SPIFFE ID. */
  issuer?: string;
  limits: LifecycleLimits;
  /** How long a rotated-in signing key is in the JWKS before it signs (tokens/key-publication.ts). */
  keyPrePublicationMs: number;
  /** How often expired tasks are swept; 0: never. */
  sweepIntervalMs: number;
  /** Token rows are deleted this long after they expire (their audit events stay). */
  tokenRetentionSeconds: number;
  /** How often each replica reads the revocation log without a notification (a lost NOTIFY costs at most this). */
  revocationPollIntervalMs: number;
  /** How often revocation streams get a heartbeat while the replica can read the log. */
  revocationHeartbeatMs: number;
  /** Backup poll interval of the watched files (policy, SVID, bundles); 0: change events only. */
  filePollIntervalMs: number;
  /** How long in-flight calls may take to finish on SIGTERM. */
  shutdownGraceMs: number;
  logLevel: string;
  connectionLimits: ConnectionLimits;
  admission: AdmissionLimits;
}

/** File descriptors kept free beside the gRPC connections: database, watched files, HTTP. */
export const RESERVED_FILE_DESCRIPTORS = 256;

function softFileLimit(): number {
  try {
    return openFilesLimit(readFileSync('/proc/self/limits', 'utf8')) ?? Infinity;
  } catch {
    return Infinity;
  }
}

/** The default connection bound, or the soft file descriptor limit less what the rest of the broker needs when that is lower. */
export function autoMaxConnections(): number {
  return Math.max(64, Math.min(DEFAULT_CONNECTION_LIMITS.maxConnections, softFileLimit() - RESERVED_FILE_DESCRIPTORS));
}

/** Every default of the configuration, except maxConnections, which depends on the process's limits (autoMaxConnections). */
export const DEFAULTS = {
  listen: { host: '0.0.0.0', port: 8443 },
  http: { host: '0.0.0.0', port: 8080 },
  workloadApiTimeoutMs: 60_000,
  database: {
    dataDir: './task-broker-data',
    waitMs: 2 * 60_000,
    poolSize: DEFAULT_POOL.maxConnections,
    poolTimeoutMs: DEFAULT_POOL.poolTimeoutMs,
    statementTimeoutMs: DEFAULT_POOL.statementTimeoutMs,
  },
  migrate: false,
  tokenAlg: 'ES256',
  limits: DEFAULT_LIMITS,
  keyPrePublicationMs: DEFAULT_PRE_PUBLICATION_MS,
  sweepIntervalMs: 30_000,
  tokenRetentionSeconds: 7 * 24 * 3600,
  revocationPollIntervalMs: 1_000,
  revocationHeartbeatMs: 5_000,
  filePollIntervalMs: 5_000,
  shutdownGraceMs: 20_000,
  logLevel: 'info',
  connectionLimits: DEFAULT_CONNECTION_LIMITS,
  admission: DEFAULT_ADMISSION_LIMITS,
} as const satisfies Omit<BrokerConfig, 'identity' | 'kek' | 'database'> & { workloadApiTimeoutMs: number; database: Omit<DatabaseConfig, 'url'> };

/** What a caller must say; everything else may be left out (nested groups field by field) and takes its default. */
export type BrokerConfigInput = Pick<BrokerConfig, 'identity' | 'kek'> &
  Partial<Omit<BrokerConfig, 'identity' | 'kek' | 'database' | 'limits' | 'connectionLimits' | 'admission'>> & {
    database?: Partial<DatabaseConfig>;
    limits?: Partial<LifecycleLimits>;
    connectionLimits?: Partial<ConnectionLimits>;
    admission?: Partial<AdmissionLimits>;
  };

/** The whole configuration: `input` over the defaults. No `http` means no HTTP listener (serve's flag turns it on by default). */
export function brokerConfig(input: BrokerConfigInput): BrokerConfig {
  const d = DEFAULTS;
  return {
    listen: input.listen ?? { ...d.listen },
    ...(input.http ? { http: input.http } : {}),
    identity: input.identity,
    ...(input.policyPath !== undefined ? { policyPath: input.policyPath } : {}),
    database: { ...d.database, ...input.database },
    migrate: input.migrate ?? d.migrate,
    kek: input.kek,
    tokenAlg: input.tokenAlg ?? d.tokenAlg,
    ...(input.issuer !== undefined ? { issuer: input.issuer } : {}),
    limits: { ...d.limits, ...input.limits },
    keyPrePublicationMs: input.keyPrePublicationMs ?? d.keyPrePublicationMs,
    sweepIntervalMs: input.sweepIntervalMs ?? d.sweepIntervalMs,
    tokenRetentionSeconds: input.tokenRetentionSeconds ?? d.tokenRetentionSeconds,
    revocationPollIntervalMs: input.revocationPollIntervalMs ?? d.revocationPollIntervalMs,
    revocationHeartbeatMs: input.revocationHeartbeatMs ?? d.revocationHeartbeatMs,
    filePollIntervalMs: input.filePollIntervalMs ?? d.filePollIntervalMs,
    shutdownGraceMs: input.shutdownGraceMs ?? d.shutdownGraceMs,
    logLevel: input.logLevel ?? d.logLevel,
    connectionLimits: { ...d.connectionLimits, ...input.connectionLimits, maxConnections: input.connectionLimits?.maxConnections ?? autoMaxConnections() },
    admission: { ...d.admission, ...input.admission },
  };
}
