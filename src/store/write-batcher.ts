/**
 * Group commit for the broker's write path. Every RPC that changes state is one operation for the
 * database function tb_apply (migrations/0003): it locks, checks, writes and appends its audit
 * event in one statement. Operations of concurrent calls that arrive while a batch is in flight
 * wait, and go together in the next one: one statement, one commit, one WAL flush for all of them.
 *
 * Each call still gets its own answer, and one call's failure never fails or commits another's
 * effect: expected refusals are per-operation results, and an unexpected error fails the whole
 * statement (nothing of the batch is committed), after which the batch is run again in halves,
 * down to single operations, so only the culprit fails. A conflict (deadlock, serialization failure) is retried
 * alone a bounded number of times. A batch whose connection died after it was sent may or may not
 * have committed: every call in it is told that its outcome is unknown.
 *
 * Operations in a batch run sorted by their lock key (the task ID, or the chain they append to),
 * so two batches in flight at once take their row locks in the same order and cannot deadlock.
 *
 * One caller's burst cannot fill the batches: a batch takes at most `maxPerCaller` operations of
 * any one caller (the rest wait, in order, for the next batches), so the calls of others that
 * arrive meanwhile share a short statement rather than wait behind a long one.
 *
 * Bounds: at most `maxBatch` operations per statement, `maxInFlight` statements at once (each
 * holds one connection), `maxQueued` operations waiting; beyond that a call is refused with
 * RESOURCE_EXHAUSTED and a retry hint. A call waits at most for the batches in flight before its
 * own is sent; each batch is bounded by the statement timeout.
 */
import { BrokerError } from '../errors.js';
import { CommitOutcomeUnknownError, databaseFailure, isServerSideFailure } from './failures.js';
import type { TransactionObserver } from './transaction.js';

/** Sends one batch (a JSON array of operations) as one statement and returns one result per operation. */
export type ApplyBatch = (opsJson: string) => Promise<unknown[]>;

export interface WriteBatcherLimits {
  /** Operations per statement. */
  maxBatch: number;
  /** Operations of one caller per statement. */
  maxPerCaller: number;
  /** Statements in flight at once (connections used by the write path). */
  maxInFlight: number;
  /** Operations waiting for a batch before calls are refused with RESOURCE_EXHAUSTED. */
  maxQueued: number;
  /** How many times an operation whose statement conflicted is run again, alone. */
  conflictRetries: number;
}

export const DEFAULT_BATCHER_LIMITS: WriteBatcherLimits = { maxBatch: 100, maxPerCaller: 8, maxInFlight: 2, maxQueued: 2048, conflictRetries: 2 };

export interface WriteBatcherOptions {
  apply: ApplyBatch;
  limits?: Partial<WriteBatcherLimits>;
  /** Told how each statement ended (readiness counts runs of failed writes). */
  observer?: TransactionObserver;
  /** Told the size and duration of each batch that committed (metrics). */
  onBatch?: (operations: number, seconds: number) => void;
}

/** Told when the statement an operation went in is sent (tracing: the call's database span). */
export interface OperationWatch {
  sent(batchSize: number): void;
}

interface Pending {
  key: string;
  caller: string;
  op: object;
  watch: OperationWatch | undefined;
  resolve: (result: unknown) => void;
  reject: (err: unknown) => void;
}

/** A retry hint for a call refused because the write queue is full. */
const QUEUE_FULL_RETRY_MS = 100;

export class WriteBatcher {
  readonly limits: WriteBatcherLimits;
  readonly #apply: ApplyBatch;
  readonly #observer: TransactionObserver | undefined;
  readonly #onBatch: WriteBatcherOptions['onBatch'];
  #queue: Pending[] = [];
  #inFlight = 0;
  #scheduled = false;

  constructor(options: WriteBatcherOptions) {
    this.limits = { ...DEFAULT_BATCHER_LIMITS, ...options.limits };
    this.#apply = options.apply;
    this.#observer = options.observer;
    this.#onBatch = options.onBatch;
  }

  /** Operations waiting for a batch now. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Statements in flight now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Queues one operation; resolves with its result once its batch committed. `key` orders lock
   * acquisition within a batch (the task ID, or the audit chain the operation appends to);
   * `caller` (the SPIFFE ID it is done for) bounds one caller's share of a batch. `watch` is told
   * each time a statement with the operation in it is sent.
   */
  submit(key: string, op: object, caller = '', watch?: OperationWatch): Promise<unknown> {
    if (this.#queue.length >= this.limits.maxQueued) {
      return Promise.reject(
        new BrokerError(
          'resource-exhausted',
          `the broker's write queue is full (${this.limits.maxQueued} calls waiting); retry in ${QUEUE_FULL_RETRY_MS} ms`,
          QUEUE_FULL_RETRY_MS,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ key, caller, op, watch, resolve, reject });
      this.#schedule();
    });
  }

  /**
   * Starts batches on the next turn of the event loop, so that calls decoded from the same
   * socket read go together even when a statement slot is free.
   */
  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.limits.maxInFlight) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.limits.maxInFlight && this.#queue.length > 0) {
      const batch = this.#take();
      this.#inFlight += 1;
      void this.#run(batch).finally(() => {
        this.#inFlight -= 1;
        if (this.#queue.length > 0) this.#schedule();
      });
    }
  }

  /** The next batch: queue order, at most maxBatch operations and maxPerCaller of any one caller. */
  #take(): Pending[] {
    const { maxBatch, maxPerCaller } = this.limits;
    if (this.#queue.length <= Math.min(maxPerCaller, maxBatch)) return this.#queue.splice(0, this.#queue.length);
    const batch: Pending[] = [];
    const rest: Pending[] = [];
    const perCaller = new Map<string, number>();
    for (const p of this.#queue) {
      const n = perCaller.get(p.caller) ?? 0;
      if (batch.length < maxBatch && n < maxPerCaller) {
        batch.push(p);
        perCaller.set(p.caller, n + 1);
      } else {
        rest.push(p);
      }
    }
    this.#queue = rest;
    return batch;
  }

  async #run(batch: Pending[], attempt = 0): Promise<void> {
    const sorted = batch.length > 1 ? batch.slice().sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)) : batch;
    const started = performance.now();
    for (const p of sorted) p.watch?.sent(sorted.length);
    let results: unknown[];
    try {
      results = await this.#apply(opsJson(sorted));
      if (results.length !== sorted.length) throw new Error(`tb_apply returned ${results.length} results for ${sorted.length} operations`);
    } catch (err) {
      const failure = err instanceof CommitOutcomeUnknownError ? err.failure : databaseFailure(err);
      const rolledBack = !(err instanceof CommitOutcomeUnknownError) && failure?.kind !== 'connection';
      if (rolledBack && sorted.length > 1 && (failure === undefined || failure.kind === 'conflict' || failure.kind === 'other')) {
        // Nothing of the batch was committed: run each half again (and so on down to single
        // operations), so only the culprit fails, at a cost of a few statements per culprit.
        const half = Math.ceil(sorted.length / 2);
        await this.#run(sorted.slice(0, half));
        await this.#run(sorted.slice(half));
        return;
      }
      if (failure?.kind === 'conflict' && attempt < this.limits.conflictRetries) return this.#run(sorted, attempt + 1);
      if (isServerSideFailure(failure) && failure) this.#observer?.failed(failure);
      for (const p of sorted) p.reject(err);
      return;
    }
    this.#observer?.committed();
    this.#onBatch?.(sorted.length, (performance.now() - started) / 1000);
    for (let i = 0; i < sorted.length; i++) sorted[i]!.resolve(results[i]);
  }
}

/**
 * The batch as JSON text. jsonb cannot hold NUL or unpaired surrogates (which a caller may put
 * in a string that ends up in an audit event): they become U+FFFD here, once per batch.
 */
function opsJson(batch: readonly Pending[]): string {
  return storableJson(JSON.stringify(batch.map((p) => p.op)));
}

/** JSON text (from JSON.stringify) with what jsonb cannot store replaced by U+FFFD. */
export function storableJson(text: string): string {
  return UNSTORABLE.test(text) ? text.replace(UNSTORABLE_ALL, (_match, backslashes: string) => `${backslashes}\\ufffd`) : text;
}

/**
 * An escaped NUL or lone surrogate in JSON.stringify's output (it writes paired surrogates as
 * they are, so every \\udXXX escape it writes is a lone one), not itself escaped: preceded by an
 * even number of backslashes.
 */
const UNSTORABLE_SOURCE = String.raw`(?<!\\)((?:\\\\)*)\\u(?:0000|d[89a-f][0-9a-f]{2})`;
const UNSTORABLE = new RegExp(UNSTORABLE_SOURCE);
const UNSTORABLE_ALL = new RegExp(UNSTORABLE_SOURCE, 'g');
