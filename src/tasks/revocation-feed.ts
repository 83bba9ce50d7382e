/**
 * One replica's view of the revocation log, fanned out to the resource servers subscribed to it.
 *
 * The feed LISTENs on `tb_revocations` (each commit that revoked tokens notifies, on whichever
 * replica it happened) and reads the log after the last seq it has seen: on each notification,
 * whenever listening (re)starts, and every `pollIntervalMs` besides, so a lost notification
 * delays nothing by more than that. Each entry goes to the subscribers of its audience. Nothing
 * here is shared between replicas: the log in the database is the truth, the notification the
 * signal, and a subscriber's cursor (revocation-log.ts) its resume point.
 *
 * Subscribers register before reading their own start (snapshot or resume) from the log, so an
 * entry that commits meanwhile reaches them either way; they drop what they have already sent.
 */
import type { Store } from '../store/database.js';
import type { Listener } from '../store/listener.js';
import { RevocationLog, type RevocationEntry } from './revocation-log.js';

export const REVOCATION_CHANNEL = 'tb_revocations';

export interface RevocationSubscriber {
  readonly audience: string;
  /** New entries for this audience, in commit order. */
  deliver(entries: RevocationEntry[]): void;
  /** The log was read successfully at `asOf`: the subscriber may tell its receiver it is current. */
  heartbeat(asOf: Date): void;
  /** The feed is closing (the broker shuts down). */
  close(): void;
}

export interface RevocationFeedOptions {
  store: Pick<Store, 'read' | 'listen'>;
  /** How often the log is read without a notification (default 1 s). */
  pollIntervalMs?: number;
  /** How often subscribers are told the feed is current (default 5 s). */
  heartbeatIntervalMs?: number;
  /** Told when listening fails or a read fails (logs). */
  onProblem?: (message: string) => void;
  /** Told how many entries each read dispatched (metrics). */
  onDispatch?: (entries: number) => void;
  clock?: () => Date;
}

/** Entries read per statement. */
const READ_BATCH = 500;

export class RevocationFeed {
  readonly log: RevocationLog;
  readonly pollIntervalMs: number;
  readonly heartbeatIntervalMs: number;
  readonly #options: RevocationFeedOptions;
  readonly #clock: () => Date;
  readonly #byAudience = new Map<string, Set<RevocationSubscriber>>();
  #subscribers = 0;
  #lastSeq: number | undefined;
  #lastReadAt: Date | undefined;
  #reading: Promise<void> | undefined;
  #readAgain = false;
  #listener: Listener | undefined;
  #poll: NodeJS.Timeout | undefined;
  #beat: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: RevocationFeedOptions) {
    this.#options = options;
    this.log = new RevocationLog(options.store);
    this.pollIntervalMs = options.pollIntervalMs ?? 1_000;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 5_000;
    this.#clock = options.clock ?? (() => new Date());
  }

  /** Starts listening and polling; resolves once the log's head has been read (or rejects when it cannot be). */
  async start(): Promise<void> {
    this.#lastSeq = await this.log.head();
    this.#lastReadAt = this.#clock();
    this.#listener = this.#options.store.listen(REVOCATION_CHANNEL, {
      onNotify: () => void this.read(),
      onReady: () => void this.read(),
      onProblem: (message, retryInMs) => this.#options.onProblem?.(`revocation listener: ${message} (retrying in ${retryInMs} ms)`),
    });
    this.#poll = setInterval(() => void this.read(), this.pollIntervalMs);
    this.#poll.unref();
    this.#beat = setInterval(() => this.#heartbeat(), this.heartbeatIntervalMs);
    this.#beat.unref();
  }

  /** When the log was last read successfully: a feed that cannot read sends no heartbeats. */
  get lastReadAt(): Date | undefined {
    return this.#lastReadAt;
  }

  /** Read recently enough for subscribers to be told they are current. */
  get current(): boolean {
    const at = this.#lastReadAt;
    return at !== undefined && this.#clock().getTime() - at.getTime() <= Math.max(3 * this.pollIntervalMs, 2_000);
  }

  get subscriberCount(): number {
    return this.#subscribers;
  }

  subscribe(subscriber: RevocationSubscriber): () => void {
    let set = this.#byAudience.get(subscriber.audience);
    if (!set) this.#byAudience.set(subscriber.audience, (set = new Set()));
    set.add(subscriber);
    this.#subscribers += 1;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#subscribers -= 1;
      set.delete(subscriber);
      if (set.size === 0 && this.#byAudience.get(subscriber.audience) === set) this.#byAudience.delete(subscriber.audience);
    };
  }

  /** Reads the log after the last seen seq; concurrent requests coalesce into one more read. */
  read(): Promise<void> {
    if (this.#closed || this.#lastSeq === undefined) return Promise.resolve();
    if (this.#reading) {
      this.#readAgain = true;
      return this.#reading;
    }
    this.#reading = this.#readLoop().finally(() => {
      this.#reading = undefined;
    });
    return this.#reading;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#poll) clearInterval(this.#poll);
    if (this.#beat) clearInterval(this.#beat);
    for (const set of this.#byAudience.values()) for (const s of [...set]) s.close();
    this.#byAudience.clear();
    await this.#listener?.close();
    await this.#reading?.catch(() => undefined);
  }

  async #readLoop(): Promise<void> {
    do {
      this.#readAgain = false;
      try {
        for (;;) {
          const startedAt = this.#clock();
          const entries = await this.log.since(this.#lastSeq!, READ_BATCH);
          if (entries.length > 0) {
            this.#lastSeq = entries.at(-1)!.seq;
            this.#dispatch(entries);
          }
          if (entries.length < READ_BATCH) {
            this.#lastReadAt = startedAt;
            break;
          }
        }
      } catch (err) {
        this.#options.onProblem?.(`reading the revocation log failed: ${(err as Error).message}`);
        return;
      }
    } while (this.#readAgain && !this.#closed);
  }

  #dispatch(entries: RevocationEntry[]): void {
    const groups = new Map<string, RevocationEntry[]>();
    for (const e of entries) {
      if (!this.#byAudience.has(e.audience)) continue;
      let group = groups.get(e.audience);
      if (!group) groups.set(e.audience, (group = []));
      group.push(e);
    }
    for (const [audience, group] of groups) for (const s of [...(this.#byAudience.get(audience) ?? [])]) s.deliver(group);
    this.#options.onDispatch?.(entries.length);
  }

  #heartbeat(): void {
    const at = this.#lastReadAt;
    if (!at || !this.current) return;
    for (const set of this.#byAudience.values()) for (const s of [...set]) s.heartbeat(at);
  }
}
