/**
 * The revocation set of a resource server, kept current by WatchRevocations: task IDs whose
 * tokens are revoked, each until its tokens would have expired anyway. A snapshot (which may come
 * in several messages) is gathered apart and replaces the set once the stream's start is
 * complete; later messages add to it. The last cursor of a whole start or a live message is the
 * resume point after a broken stream (reconnects back off with jitter, capped). Once a stream's
 * start is complete, every message, heartbeats included, refreshes the set's age: a set older
 * than the staleness bound cannot say a token is not revoked. A stream silent for three
 * heartbeats is dropped and opened again (a replica that lost its database, a half-open
 * connection), so another replica can serve.
 */
import type { WatchRevocationsResponse__Output } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
import { timestampMillis } from '../protocol/timestamps.js';
import { backoffDelay } from './clock.js';
import type { RevocationStream, VerifierBroker, VerifierClock, VerifierLogger } from './types.js';

/** Heartbeats the broker may skip before the stream is dropped and opened again. */
const SILENT_HEARTBEATS = 3;
/** The heartbeat interval assumed until the broker states its own. */
const DEFAULT_HEARTBEAT_MS = 5_000;

/** One stream's start: a snapshot being gathered, and whether the start is complete. */
interface StreamStart {
  staging: Map<string, number> | undefined;
  complete: boolean;
}

export interface RevocationWatcherOptions {
  broker: VerifierBroker;
  clock: VerifierClock;
  logger: VerifierLogger;
  reconnectInitialMs: number;
  reconnectMaxMs: number;
  /** Kept past tokens_expire_by by this much: the verifier's clock tolerance, so a token accepted within its leeway is still seen revoked. */
  graceMs: number;
}

export class RevocationWatcher {
  readonly #options: RevocationWatcherOptions;
  /** task_id → ms after which its revocation no longer matters (tokens_expire_by). */
  #revoked = new Map<string, number>();
  #cursor = '';
  #lastMessageAt: number | undefined;
  #heartbeatIntervalMs = DEFAULT_HEARTBEAT_MS;
  #stream: RevocationStream | undefined;
  #reconnectTimer: unknown;
  #silenceTimer: unknown;
  #failures = 0;
  #reconnects = 0;
  #closed = false;
  #nextPruneAt = 0;
  readonly #listeners = new Set<(taskId: string) => void>();
  readonly #firstMessage: Promise<void>;
  #resolveFirst!: () => void;

  constructor(options: RevocationWatcherOptions) {
    this.#options = options;
    this.#firstMessage = new Promise((resolve) => (this.#resolveFirst = resolve));
  }

  start(): void {
    this.#connect();
  }

  /** Resolves once the first stream's start is complete. */
  ready(): Promise<void> {
    return this.#firstMessage;
  }

  /** Calls `listener` with the task ID of each revocation as it arrives (snapshots included); returns the unsubscribe function. */
  onRevoked(listener: (taskId: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Whether tokens of `taskId` are revoked, as far as the set knows. */
  isRevoked(taskId: string, now: number): boolean {
    const until = this.#revoked.get(taskId);
    return until !== undefined && now <= until;
  }

  /** Time since the last message, or Infinity before the first. */
  ageMs(now: number): number {
    return this.#lastMessageAt === undefined ? Number.POSITIVE_INFINITY : now - this.#lastMessageAt;
  }

  get reconnects(): number {
    return this.#reconnects;
  }

  close(): void {
    this.#closed = true;
    if (this.#reconnectTimer !== undefined) this.#options.clock.clearTimeout(this.#reconnectTimer);
    this.#quiet();
    const stream = this.#stream;
    this.#stream = undefined;
    stream?.cancel();
  }

  #connect(): void {
    if (this.#closed) return;
    this.#reconnectTimer = undefined;
    let stream: RevocationStream;
    try {
      stream = this.#options.broker.watchRevocations(this.#cursor);
    } catch (error) {
      this.#ended(undefined, error as Error);
      return;
    }
    this.#stream = stream;
    const start: StreamStart = { staging: undefined, complete: false };
    this.#listen(stream);
    stream.on('data', (message) => {
      if (this.#stream !== stream) return;
      this.#listen(stream);
      this.#receive(message, start);
    });
    stream.on('error', (error) => this.#ended(stream, error));
    stream.on('end', () => this.#ended(stream, undefined));
  }

  #receive(message: WatchRevocationsResponse__Output, start: StreamStart): void {
    const now = this.#options.clock.now();
    this.#failures = 0;
    if (message.snapshot) start.staging = new Map();
    const target = start.staging ?? this.#revoked;
    for (const revocation of message.revocations ?? []) {
      const until = (timestampMillis(revocation.tokensExpireBy) ?? Number.POSITIVE_INFINITY) + this.#options.graceMs;
      const known = target.get(revocation.taskId);
      if (known === undefined || until > known) target.set(revocation.taskId, until);
    }
    for (const revocation of message.revocations ?? []) this.#tell(revocation.taskId);
    const interval = durationMs(message.heartbeatInterval);
    if (interval !== undefined && interval > 0) this.#heartbeatIntervalMs = interval;
    // A broker older than start_complete never sends it; its first heartbeat (an empty message that
    // is not a snapshot, which a current broker never sends before its start is whole) ends the start.
    const completes = message.startComplete || (!message.snapshot && (message.revocations?.length ?? 0) === 0);
    if (completes) {
      start.complete = true;
      if (start.staging) this.#revoked = start.staging;
      start.staging = undefined;
    }
    // A cursor inside a snapshot not yet whole would resume past what was never applied.
    if (message.cursor && start.staging === undefined) this.#cursor = message.cursor;
    if (!start.complete) return;
    this.#lastMessageAt = now;
    if (now >= this.#nextPruneAt) this.#prune(now);
    this.#resolveFirst();
  }

  /** Tells the onRevoked listeners; one that throws is logged, never allowed to break the stream. */
  #tell(taskId: string): void {
    for (const listener of this.#listeners) {
      try {
        listener(taskId);
      } catch (error) {
        this.#options.logger('error', 'verifier: an onRevoked listener threw', { error: (error as Error).message, taskId });
      }
    }
  }

  /** (Re)arms the silence check of `stream`: no message for SILENT_HEARTBEATS heartbeats drops it (it then reconnects). */
  #listen(stream: RevocationStream): void {
    this.#quiet();
    this.#silenceTimer = this.#options.clock.setTimeout(() => {
      this.#silenceTimer = undefined;
      if (this.#stream !== stream) return;
      this.#ended(stream, new Error(`the revocation stream was silent for ${SILENT_HEARTBEATS} heartbeats`));
      stream.cancel();
    }, SILENT_HEARTBEATS * this.#heartbeatIntervalMs);
  }

  #quiet(): void {
    if (this.#silenceTimer !== undefined) this.#options.clock.clearTimeout(this.#silenceTimer);
    this.#silenceTimer = undefined;
  }

  /** Drops revocations whose tokens have all expired; at most once a second. */
  #prune(now: number): void {
    this.#nextPruneAt = now + 1000;
    for (const [taskId, until] of this.#revoked) if (until < now) this.#revoked.delete(taskId);
  }

  /** The stream ended or failed: once per stream, reconnect after a backoff with the last cursor. */
  #ended(stream: RevocationStream | undefined, error: Error | undefined): void {
    if (stream !== undefined && this.#stream !== stream) return;
    this.#stream = undefined;
    this.#quiet();
    if (this.#closed) return;
    const delay = backoffDelay(this.#failures, this.#options.reconnectInitialMs, this.#options.reconnectMaxMs);
    this.#failures += 1;
    this.#reconnects += 1;
    this.#options.logger(error ? 'warn' : 'info', 'verifier: revocation stream ended; reconnecting', {
      error: error?.message,
      delayMs: delay,
      cursor: this.#cursor,
    });
    this.#reconnectTimer = this.#options.clock.setTimeout(() => this.#connect(), delay);
  }
}

function durationMs(d: { seconds?: string | number | null; nanos?: number | null } | null | undefined): number | undefined {
  const ms = timestampMillis(d);
  return ms === undefined || ms <= 0 ? undefined : ms;
}
