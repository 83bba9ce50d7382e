/**
 * The revocation set of a resource server, kept current by WatchRevocations: task IDs whose
 * tokens are revoked, each until its tokens would have expired anyway. A snapshot replaces the
 * set, later messages add to it; the last cursor is the resume point after a broken stream
 * (reconnects back off with jitter, capped). Every message, heartbeats included, refreshes the
 * set's age: a set older than the staleness bound cannot say a token is not revoked.
 */
import type { WatchRevocationsResponse__Output } from '../gen/taskbroker/v1/WatchRevocationsResponse.js';
import { backoffDelay } from './clock.js';
import type { RevocationStream, VerifierBroker, VerifierClock, VerifierLogger } from './types.js';

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
  #heartbeatIntervalMs: number | undefined;
  #stream: RevocationStream | undefined;
  #reconnectTimer: unknown;
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

  /** Resolves with the first message of the first stream that delivers one. */
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

  get heartbeatIntervalMs(): number | undefined {
    return this.#heartbeatIntervalMs;
  }

  get cursor(): string {
    return this.#cursor;
  }

  get reconnects(): number {
    return this.#reconnects;
  }

  get size(): number {
    return this.#revoked.size;
  }

  close(): void {
    this.#closed = true;
    if (this.#reconnectTimer !== undefined) this.#options.clock.clearTimeout(this.#reconnectTimer);
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
    stream.on('data', (message) => {
      if (this.#stream === stream) this.#receive(message);
    });
    stream.on('error', (error) => this.#ended(stream, error));
    stream.on('end', () => this.#ended(stream, undefined));
  }

  #receive(message: WatchRevocationsResponse__Output): void {
    const now = this.#options.clock.now();
    this.#lastMessageAt = now;
    this.#failures = 0;
    if (message.snapshot) this.#revoked = new Map();
    for (const revocation of message.revocations ?? []) {
      const until = (timestampMs(revocation.tokensExpireBy) ?? Number.POSITIVE_INFINITY) + this.#options.graceMs;
      const known = this.#revoked.get(revocation.taskId);
      if (known === undefined || until > known) this.#revoked.set(revocation.taskId, until);
    }
    if (this.#listeners.size > 0) for (const revocation of message.revocations ?? []) for (const l of this.#listeners) l(revocation.taskId);
    if (message.cursor) this.#cursor = message.cursor;
    const interval = durationMs(message.heartbeatInterval);
    if (interval !== undefined) this.#heartbeatIntervalMs = interval;
    if (now >= this.#nextPruneAt) this.#prune(now);
    this.#resolveFirst();
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

function timestampMs(ts: { seconds?: string | number | null; nanos?: number | null } | null | undefined): number | undefined {
  if (!ts) return undefined;
  const ms = Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
  return Number.isFinite(ms) ? ms : undefined;
}

function durationMs(d: { seconds?: string | number | null; nanos?: number | null } | null | undefined): number | undefined {
  const ms = timestampMs(d);
  return ms === undefined || ms <= 0 ? undefined : ms;
}
