/**
 * Access reports: offline verifications are still evidence. Each outcome is queued as a TokenUse
 * and sent in batches through ReportTokenUse (every flushIntervalMs, or as soon as maxBatch are
 * queued). Delivery is at least once: a failed batch goes back to the front of the queue with
 * the same report_ids and is retried after a backoff; the broker records a report_id once. The
 * queue is bounded: beyond maxBuffered the oldest reports are dropped, counted and logged (at
 * most once a minute).
 */
import { status } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import type { TokenUse } from '../gen/taskbroker/v1/TokenUse.js';
import { backoffDelay } from './clock.js';
import type { ReportingOptions, VerifierBroker, VerifierClock, VerifierLogger } from './types.js';

export interface UseReporterOptions extends Required<ReportingOptions> {
  broker: VerifierBroker;
  clock: VerifierClock;
  logger: VerifierLogger;
}

export interface UseReport {
  tokenId: string;
  taskId: string;
  /** A VerifyTokenReason name, e.g. VERIFY_TOKEN_REASON_VALID. */
  outcome: string;
  operation: string;
  presenterThumbprint: string | undefined;
}

const DROP_LOG_INTERVAL_MS = 60_000;

export class UseReporter {
  readonly #options: UseReporterOptions;
  /** Queued reports: #queue[#head] is the oldest. */
  #queue: TokenUse[] = [];
  #head = 0;
  #timer: unknown;
  #timerDue = Number.POSITIVE_INFINITY;
  #flushing: Promise<void> | undefined;
  #failures = 0;
  #sent = 0;
  #dropped = 0;
  #failedFlushes = 0;
  #droppedSinceLog = 0;
  #lastDropLogAt = Number.NEGATIVE_INFINITY;
  #closed = false;

  constructor(options: UseReporterOptions) {
    if (!(options.maxBatch >= 1 && options.maxBatch <= 1024)) throw new RangeError('reporting.maxBatch must be between 1 and 1024');
    if (!(options.maxBuffered >= options.maxBatch)) throw new RangeError('reporting.maxBuffered must be at least maxBatch');
    this.#options = options;
  }

  get stats(): { sent: number; buffered: number; dropped: number; failedFlushes: number } {
    return { sent: this.#sent, buffered: this.#queue.length - this.#head, dropped: this.#dropped, failedFlushes: this.#failedFlushes };
  }

  /** Queues one report; cheap (no I/O, no timer churn on the hot path). */
  add(report: UseReport, at: number): void {
    if (this.#closed) return;
    const seconds = Math.floor(at / 1000);
    this.#queue.push({
      reportId: randomUUID(),
      tokenId: report.tokenId,
      taskId: report.taskId,
      outcome: report.outcome as TokenUse['outcome'],
      operation: report.operation,
      verifiedAt: { seconds: String(seconds), nanos: (at - seconds * 1000) * 1_000_000 },
      presenterCertThumbprint: report.presenterThumbprint ?? '',
    });
    const buffered = this.#queue.length - this.#head;
    if (buffered > this.#options.maxBuffered) this.#drop(buffered - this.#options.maxBuffered);
    // A flush under way, or a retry waiting out its backoff, takes these along.
    if (this.#flushing || (this.#failures > 0 && this.#timer !== undefined)) return;
    this.#schedule(buffered >= this.#options.maxBatch ? 0 : this.#options.flushIntervalMs);
  }

  /** Sends what is queued, batch by batch, until the queue is empty or a batch fails. */
  flush(): Promise<void> {
    if (this.#flushing) return this.#flushing;
    this.#cancelTimer();
    this.#flushing = this.#sendAll().finally(() => {
      this.#flushing = undefined;
      if (this.#closed) return;
      const buffered = this.#queue.length - this.#head;
      if (buffered > 0) {
        const delay =
          this.#failures > 0 ? backoffDelay(this.#failures - 1, this.#options.retryInitialMs, this.#options.retryMaxMs) : this.#options.flushIntervalMs;
        this.#schedule(this.#failures === 0 && buffered >= this.#options.maxBatch ? 0 : delay, true);
      }
    });
    return this.#flushing;
  }

  /** Stops the timer and makes one last flush, waiting at most `timeoutMs`. */
  async close(timeoutMs: number): Promise<void> {
    this.#cancelTimer();
    const pending = this.#flushing ?? Promise.resolve();
    const last = pending.then(() => (this.#queue.length > this.#head ? this.#sendAll() : undefined));
    this.#closed = true;
    let timer: unknown;
    const timeout = new Promise<void>((resolve) => (timer = this.#options.clock.setTimeout(resolve, timeoutMs)));
    await Promise.race([last.catch(() => undefined), timeout]);
    this.#options.clock.clearTimeout(timer);
  }

  async #sendAll(): Promise<void> {
    while (this.#queue.length > this.#head) {
      const end = Math.min(this.#queue.length, this.#head + this.#options.maxBatch);
      const batch = this.#queue.slice(this.#head, end);
      this.#head = end;
      this.#compact();
      try {
        await this.#options.broker.reportTokenUse(batch);
        this.#sent += batch.length;
        this.#failures = 0;
      } catch (error) {
        if ((error as { code?: unknown }).code === status.INVALID_ARGUMENT) {
          // The broker refused the batch as malformed: sending it again cannot help, and would hold back every report behind it.
          this.#dropped += batch.length;
          this.#options.logger('error', 'verifier: the broker refused a batch of access reports as malformed; dropped', {
            error: (error as Error).message,
            reports: batch.length,
          });
          continue;
        }
        // Back to the front, the same objects and report_ids; the bound still holds (oldest dropped).
        this.#queue = [...batch, ...this.#queue.slice(this.#head)];
        this.#head = 0;
        const over = this.#queue.length - this.#options.maxBuffered;
        if (over > 0) this.#drop(over);
        this.#failures += 1;
        this.#failedFlushes += 1;
        this.#options.logger('warn', 'verifier: access report flush failed; will retry', { error: (error as Error).message, reports: batch.length });
        return;
      }
    }
  }

  #drop(count: number): void {
    this.#head += count;
    this.#dropped += count;
    this.#droppedSinceLog += count;
    this.#compact();
    const now = this.#options.clock.now();
    if (now - this.#lastDropLogAt >= DROP_LOG_INTERVAL_MS) {
      this.#options.logger('warn', 'verifier: access report buffer full; oldest reports dropped', {
        dropped: this.#droppedSinceLog,
        totalDropped: this.#dropped,
      });
      this.#lastDropLogAt = now;
      this.#droppedSinceLog = 0;
    }
  }

  /** Reclaims the consumed front of the queue once it is most of the array. */
  #compact(): void {
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Arms the flush timer for `delayMs` from now unless it is already due sooner (`replace`: arm it anyway). */
  #schedule(delayMs: number, replace = false): void {
    const due = this.#options.clock.now() + delayMs;
    if (this.#timer !== undefined && !replace && this.#timerDue <= due) return;
    this.#cancelTimer();
    this.#timerDue = due;
    this.#timer = this.#options.clock.setTimeout(() => {
      this.#timer = undefined;
      this.#timerDue = Number.POSITIVE_INFINITY;
      void this.flush();
    }, delayMs);
  }

  #cancelTimer(): void {
    if (this.#timer !== undefined) this.#options.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerDue = Number.POSITIVE_INFINITY;
  }
}
