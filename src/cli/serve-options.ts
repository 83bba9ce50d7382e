/**
 * The flags and environment variables of `task-broker serve`: names, help texts and the
 * defaults shown in the help, which come from the broker's configuration (app/config.ts).
 */
import { DEFAULTS, RESERVED_FILE_DESCRIPTORS, type ListenAddress } from '../app/config.js';
import { SPIFFE_ENDPOINT_SOCKET } from '../spiffe/workload-api.js';
import { DEFAULT_KEY_REFRESH_INTERVAL_MS, JWKS_MAX_AGE_SECONDS, VERIFIER_KEY_MAX_AGE_MS } from '../tokens/key-publication.js';
import { TOKEN_ALGS } from '../tokens/keyring.js';
import type { CommandSpec, OptionSpec } from './options.js';

const UNITS = [
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1_000],
] as const;

/** A duration as the flags take it ("30s", "5m", "168h"): in `unit`, or the largest unit that divides it. */
function durationText(ms: number, unit?: (typeof UNITS)[number][0]): string {
  const [name, size] = UNITS.find(([n, size]) => (unit ? n === unit : ms % size === 0)) ?? ['ms', 1];
  return `${ms / size}${name}`;
}

const secondsText = (seconds: number) => durationText(seconds * 1000);

const listenText = ({ host, port }: ListenAddress) => `${host}:${port}`;

/** Where the data lives: shared by serve and migrate. */
export const storageOptions: Record<string, OptionSpec> = {
  'database-url': {
    type: 'string',
    placeholder: 'URL',
    env: 'TASK_BROKER_DATABASE_URL',
    description: 'PostgreSQL connection URL (postgres://…); when absent, embedded PGlite in --data-dir',
  },
  'data-dir': {
    type: 'string',
    placeholder: 'DIR',
    env: 'TASK_BROKER_DATA_DIR',
    default: DEFAULTS.database.dataDir,
    description: 'Directory of the embedded PGlite database',
  },
  'database-wait': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_DATABASE_WAIT',
    default: durationText(DEFAULTS.database.waitMs),
    description:
      "How long to keep trying to reach PostgreSQL at start (with backoff) before giving up, so a broker may start before its database ('0s': one attempt). Keep it below the startup probe's budget",
  },
};

/** Limits on what callers and peers can hold: every one has a default and a flag. */
export const limitOptions: Record<string, OptionSpec> = {
  'database-pool-size': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_DATABASE_POOL_SIZE',
    default: String(DEFAULTS.database.poolSize),
    description: 'PostgreSQL connections per replica',
  },
  'database-pool-timeout': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_DATABASE_POOL_TIMEOUT',
    default: durationText(DEFAULTS.database.poolTimeoutMs),
    description: 'How long a call may wait for a database connection before it fails with UNAVAILABLE',
  },
  'statement-timeout': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_STATEMENT_TIMEOUT',
    default: durationText(DEFAULTS.database.statementTimeoutMs),
    description: 'Longest a database statement may run',
  },
  'handshake-timeout': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_HANDSHAKE_TIMEOUT',
    default: durationText(DEFAULTS.connectionLimits.handshakeTimeoutMs),
    description: 'A connection whose TLS handshake has not finished by then is closed',
  },
  'max-connections': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CONNECTIONS',
    default: 'auto',
    description: `Open gRPC connections at most; 'auto': ${DEFAULTS.connectionLimits.maxConnections}, or the file descriptor limit less ${RESERVED_FILE_DESCRIPTORS} when that is lower`,
  },
  'max-handshakes': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_HANDSHAKES',
    default: String(DEFAULTS.connectionLimits.maxHandshakes),
    description: 'Connections in their TLS handshake at once at most; further ones are closed on accept',
  },
  'max-connection-idle': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_MAX_CONNECTION_IDLE',
    default: durationText(DEFAULTS.connectionLimits.idleTimeoutMs),
    description: "A connection without a call for this long is closed (GOAWAY); '0s': never",
  },
  'max-connection-age': {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_MAX_CONNECTION_AGE',
    default: durationText(DEFAULTS.connectionLimits.maxConnectionAgeMs),
    description: "Connections are closed gracefully after about this long so clients rebalance over replicas (calls in flight get 5m); '0s': never",
  },
  'max-concurrent-streams': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CONCURRENT_STREAMS',
    default: String(DEFAULTS.connectionLimits.maxConcurrentStreams),
    description:
      "Concurrent calls per connection (HTTP/2 streams): a caller's in-flight limit and some room to be told RESOURCE_EXHAUSTED; a client queues more itself",
  },
  'max-calls-per-caller': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_CALLS_PER_CALLER',
    default: String(DEFAULTS.admission.maxInFlightPerCaller),
    description: 'Calls one SPIFFE ID may have in flight at once; beyond that RESOURCE_EXHAUSTED with a retry hint',
  },
  'max-active-calls': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_ACTIVE_CALLS',
    default: String(DEFAULTS.admission.maxActive),
    description:
      'Calls that run at once in the replica; more wait their turn, callers served in turn, each caller at most an equal share among those active in the last second (alone, all of them), so a flood from one caller does not slow the others',
  },
  'caller-rate': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_CALLER_RATE',
    default: String(DEFAULTS.admission.callerRatePerSecond),
    description: 'Calls per second one SPIFFE ID may make (token bucket, burst of one second); 0: no rate limit',
  },
  'max-in-flight': {
    type: 'string',
    placeholder: 'N',
    env: 'TASK_BROKER_MAX_IN_FLIGHT',
    default: String(DEFAULTS.admission.maxInFlight),
    description: 'Calls in flight in the whole replica at once; beyond that UNAVAILABLE (load shedding)',
  },
};

export const serveSpec: CommandSpec = {
  name: 'serve',
  summary: 'Run the broker: gRPC over mTLS with X509-SVIDs.',
  options: {
    listen: {
      type: 'string',
      placeholder: 'HOST:PORT',
      env: 'TASK_BROKER_LISTEN',
      default: listenText(DEFAULTS.listen),
      description: 'Address of the gRPC (mTLS) listener',
    },
    'http-listen': {
      type: 'string',
      placeholder: 'HOST:PORT',
      env: 'TASK_BROKER_HTTP_LISTEN',
      default: listenText(DEFAULTS.http),
      description: "Address of the HTTP listener serving /.well-known/jwks.json ('off' to disable)",
    },
    'workload-api': {
      type: 'string',
      placeholder: 'ADDRESS',
      env: SPIFFE_ENDPOINT_SOCKET,
      description:
        "SPIFFE Workload API endpoint (a SPIRE agent), e.g. unix:///run/spire/agent-sockets/api.sock: the broker's SVID and every trust bundle come from it, followed as they rotate. Replaces --svid-cert, --svid-key and --bundle",
    },
    'workload-api-timeout': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_WORKLOAD_API_TIMEOUT',
      default: durationText(DEFAULTS.workloadApiTimeoutMs, 's'),
      description: 'How long to wait at start for the first SVID from the Workload API before giving up',
    },
    'workload-api-spiffe-id': {
      type: 'string',
      placeholder: 'ID',
      env: 'TASK_BROKER_WORKLOAD_API_SPIFFE_ID',
      description: "Serve with the Workload API's SVID for this SPIFFE ID (default: the first, the agent's default identity)",
    },
    'svid-cert': {
      type: 'string',
      placeholder: 'FILE',
      env: 'TASK_BROKER_SVID_CERT',
      description: "The broker's own X509-SVID certificate chain (PEM, leaf first); reloaded on change",
    },
    'svid-key': {
      type: 'string',
      placeholder: 'FILE',
      env: 'TASK_BROKER_SVID_KEY',
      description: "The private key of the broker's SVID (PEM); reloaded on change",
    },
    bundle: {
      type: 'string',
      multiple: true,
      placeholder: 'TRUST_DOMAIN=FILE',
      env: 'TASK_BROKER_BUNDLES',
      description: 'Trust bundle of a trust domain whose workloads may call (PEM or SPIFFE bundle JSON); reloaded on change',
    },
    policy: {
      type: 'string',
      placeholder: 'FILE',
      env: 'TASK_BROKER_POLICY',
      description:
        'Policy document (YAML); reloaded on change, a broken new version keeps the last good one. Without it every task and admin request is denied',
    },
    ...storageOptions,
    migrate: {
      type: 'boolean',
      env: 'TASK_BROKER_MIGRATE',
      description: 'Apply pending database migrations at start (otherwise the broker refuses to start while any is pending)',
    },
    'kek-file': {
      type: 'string',
      placeholder: 'FILE',
      env: 'TASK_BROKER_KEK_FILE',
      description: 'Key-encryption key for the signing keys at rest: 32 random bytes, base64 (mode 0600)',
    },
    kek: {
      type: 'string',
      placeholder: 'BASE64',
      env: 'TASK_BROKER_KEK',
      description: 'The key-encryption key itself, base64 (prefer --kek-file or the env var to a flag)',
    },
    'token-alg': {
      type: 'string',
      placeholder: 'ALG',
      env: 'TASK_BROKER_TOKEN_ALG',
      default: DEFAULTS.tokenAlg,
      description: `Token signature algorithm: ${TOKEN_ALGS.join(' or ')}`,
    },
    issuer: { type: 'string', placeholder: 'ISS', env: 'TASK_BROKER_ISSUER', description: "Token issuer (iss); default: the broker's SPIFFE ID" },
    'default-task-ttl': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_DEFAULT_TASK_TTL',
      default: secondsText(DEFAULTS.limits.defaultTaskTtlSeconds),
      description: 'Task lifetime when CreateTask gives none',
    },
    'max-task-ttl': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_MAX_TASK_TTL',
      default: secondsText(DEFAULTS.limits.maxTaskTtlSeconds),
      description: 'Longest task lifetime a caller may ask for',
    },
    'default-token-ttl': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_DEFAULT_TOKEN_TTL',
      default: secondsText(DEFAULTS.limits.defaultTokenTtlSeconds),
      description: 'Token lifetime when IssueToken gives none',
    },
    'max-token-ttl': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_MAX_TOKEN_TTL',
      default: secondsText(DEFAULTS.limits.maxTokenTtlSeconds),
      description: 'Longest token lifetime (never past the task expiry)',
    },
    'key-pre-publication': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_KEY_PRE_PUBLICATION',
      default: durationText(DEFAULTS.keyPrePublicationMs),
      description:
        `How long a rotated-in signing key is in the JWKS before it signs: at least the JWKS cache lifetime (${JWKS_MAX_AGE_SECONDS}s) ` +
        `plus the replicas' key refresh interval (${DEFAULT_KEY_REFRESH_INTERVAL_MS / 1000}s); the default adds the verifier SDK's key max age (${VERIFIER_KEY_MAX_AGE_MS / 1000}s)`,
    },
    'sweep-interval': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_SWEEP_INTERVAL',
      default: durationText(DEFAULTS.sweepIntervalMs),
      description: 'How often expired tasks are swept (safe in every replica)',
    },
    'token-retention': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_TOKEN_RETENTION',
      default: secondsText(DEFAULTS.tokenRetentionSeconds),
      description: 'How long token rows are kept after they expire (audit events are kept)',
    },
    'revocation-heartbeat': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_REVOCATION_HEARTBEAT',
      default: durationText(DEFAULTS.revocationHeartbeatMs),
      description: 'How often WatchRevocations streams get a heartbeat while the revocation log is readable (verifiers treat silence as stale)',
    },
    'revocation-poll-interval': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_REVOCATION_POLL_INTERVAL',
      default: durationText(DEFAULTS.revocationPollIntervalMs),
      description: 'How often the revocation log is read without a notification (the most a lost NOTIFY can delay a revocation)',
    },
    'file-poll-interval': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_FILE_POLL_INTERVAL',
      default: durationText(DEFAULTS.filePollIntervalMs),
      description: 'Backup poll interval for watched files (SVID, bundles)',
    },
    ...limitOptions,
    'shutdown-grace': {
      type: 'string',
      placeholder: 'DURATION',
      env: 'TASK_BROKER_SHUTDOWN_GRACE',
      default: durationText(DEFAULTS.shutdownGraceMs),
      description: 'How long in-flight calls may take to finish on SIGTERM',
    },
    'log-level': {
      type: 'string',
      placeholder: 'LEVEL',
      env: 'TASK_BROKER_LOG_LEVEL',
      default: DEFAULTS.logLevel,
      description: 'trace, debug, info, warn, error or silent',
    },
  },
};
