/**
 * Admission: how much work one caller, and everyone together, may have in the broker at once.
 *
 * A burst from one identity must not become everyone's outage. Each SPIFFE ID may have a bounded
 * number of calls in flight (and, optionally, a bounded rate); beyond that its calls end at once
 * with RESOURCE_EXHAUSTED and a retry hint (the `grpc-retry-pushback-ms` trailer of gRFC A6 and
 * the same figure in the message). The broker as a whole sheds load with UNAVAILABLE before its
 * database pool's queue grows without bound, so requests fail fast instead of timing out. All of
 * it runs before the request is decoded and before any database work.
 */
import * as grpc from '@grpc/grpc-js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { admissionInterceptor } from './admission-interceptor.js';
import { CallerRateLimiter } from './caller-rate.js';
import { FairShare } from './fair-share.js';

export interface AdmissionLimits {
  /** Calls one SPIFFE ID may have in flight at once (running or waiting its turn); beyond that RESOURCE_EXHAUSTED. */
  maxInFlightPerCaller: number;
  /**
   * Calls that run at once in the whole replica; the rest wait their turn in the broker, in
   * order, without holding a database connection, callers served round robin. Each caller runs
   * at most an equal share of them among the callers seen in the last second (at least one call);
   * a caller alone may use them all. Keep it near what the event loop and the database work on
   * together without queueing: more only adds latency.
   */
  maxActive: number;
  /** Sustained calls per second one SPIFFE ID may make; 0: no rate limit. */
  callerRatePerSecond: number;
  /** How many calls above the rate a caller may make in a burst (token bucket size). */
  callerBurst: number;
  /**
   * While callers without a burst are active, a caller with a burst behind it starts one call
   * per this many milliseconds (a trickle, so it always makes progress); once they have been
   * quiet for a second it runs its full share again.
   */
  burstTrickleMs: number;
  /** Calls the whole broker takes in flight at once before it sheds load. */
  maxInFlight: number;
  /** Requests that may wait for a database connection before new calls are shed. */
  maxDatabaseQueue: number;
  /** How long a call over its caller's quota waits before its RESOURCE_EXHAUSTED (at most its retry hint); 0: at once. */
  refusalDelayMs: number;
}

export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = {
  maxInFlightPerCaller: 32,
  maxActive: 64,
  burstTrickleMs: 100,
  callerRatePerSecond: 0,
  callerBurst: 0,
  maxInFlight: 512,
  maxDatabaseQueue: 256,
  refusalDelayMs: 250,
};

export interface AdmissionOptions {
  limits?: Partial<AdmissionLimits>;
  metrics?: BrokerMetrics;
  /** Requests waiting for a database connection now (the pool's queue). */
  databaseQueue?: () => number;
  /** Only calls to these services are admitted or refused here (health and reflection never are). */
  services: readonly string[];
  /** Method paths never admitted here: long-lived streams that hold no slot and have limits of their own. */
  exempt?: readonly string[];
}

/** One caller's calls: how many are admitted, how many run, and who waits for a turn. */
interface CallerCalls {
  inFlight: number;
  active: number;
  waiting: Array<() => void>;
}

/** An admitted call: it runs once `whenActive` fires; `release` once it ended (or was cancelled while waiting). */
export interface AdmissionSlot {
  whenActive(run: () => void): void;
  release(): void;
}

export type Refusal = {
  code: grpc.status;
  details: string;
  retryAfterMs: number;
  reason: 'caller-in-flight' | 'caller-rate' | 'broker-in-flight' | 'database-queue';
};

export class CallAdmission {
  readonly limits: AdmissionLimits;
  readonly #callers = new Map<string, CallerCalls>();
  /** Callers with calls waiting for a turn, in the order their turn comes (a Set keeps insertion order). */
  readonly #turns = new Set<string>();
  #active = 0;
  readonly #share: FairShare;
  /** Dispatches waiting calls every burstTrickleMs while any wait (the trickle needs a clock). */
  #ticker: NodeJS.Timeout | undefined;
  readonly #rates: CallerRateLimiter;
  readonly #metrics: BrokerMetrics | undefined;
  readonly #databaseQueue: () => number;
  readonly #prefixes: readonly string[];
  readonly #exempt: ReadonlySet<string>;
  #total = 0;

  constructor(options: AdmissionOptions) {
    this.limits = { ...DEFAULT_ADMISSION_LIMITS, ...options.limits };
    if (this.limits.callerRatePerSecond > 0 && this.limits.callerBurst < 1) this.limits.callerBurst = Math.max(1, Math.ceil(this.limits.callerRatePerSecond));
    this.#rates = new CallerRateLimiter(this.limits);
    this.#share = new FairShare(this.limits);
    this.#metrics = options.metrics;
    this.#databaseQueue = options.databaseQueue ?? (() => 0);
    this.#prefixes = options.services.map((s) => `/${s}/`);
    this.#exempt = new Set(options.exempt ?? []);
  }

  /** Calls in flight now (running or waiting their turn), all callers together. */
  get inFlight(): number {
    return this.#total;
  }

  /** Stops the dispatch ticker (it does not keep the process alive either way). */
  close(): void {
    clearInterval(this.#ticker);
    this.#ticker = undefined;
  }

  /** Calls running now. */
  get active(): number {
    return this.#active;
  }

  /** Takes a slot for `caller`, or says why not. The slot must be released exactly once. */
  admit(caller: string): AdmissionSlot | Refusal {
    const calls = this.#callers.get(caller) ?? { inFlight: 0, active: 0, waiting: [] };
    if (calls.inFlight >= this.limits.maxInFlightPerCaller) {
      return {
        code: grpc.status.RESOURCE_EXHAUSTED,
        reason: 'caller-in-flight',
        retryAfterMs: this.limits.refusalDelayMs > 0 ? this.limits.refusalDelayMs : 100,
        details: `too many calls in flight for ${caller}: at most ${this.limits.maxInFlightPerCaller} at once`,
      };
    }
    if (this.#total >= this.limits.maxInFlight) {
      return {
        code: grpc.status.UNAVAILABLE,
        reason: 'broker-in-flight',
        retryAfterMs: 200,
        details: `the broker is overloaded (${this.#total} calls in flight)`,
      };
    }
    if (this.#databaseQueue() >= this.limits.maxDatabaseQueue) {
      return {
        code: grpc.status.UNAVAILABLE,
        reason: 'database-queue',
        retryAfterMs: 200,
        details: 'the broker is overloaded (its database connections are all busy)',
      };
    }
    const wait = this.#rates.take(caller);
    if (wait > 0) {
      return {
        code: grpc.status.RESOURCE_EXHAUSTED,
        reason: 'caller-rate',
        retryAfterMs: wait,
        details: `${caller} is over its rate of ${this.limits.callerRatePerSecond} calls per second`,
      };
    }
    calls.inFlight += 1;
    this.#callers.set(caller, calls);
    this.#total += 1;
    let state: 'new' | 'waiting' | 'active' | 'released' = 'new';
    let turn: (() => void) | undefined;
    return {
      whenActive: (run) => {
        if (state !== 'new') return;
        turn = () => {
          state = 'active';
          calls.active += 1;
          this.#active += 1;
          this.#share.noteActivity(caller, calls);
          run();
        };
        // Straight in when there is room and nobody waits; otherwise in line, served in turns.
        if (this.#turns.size === 0 && this.#active < this.limits.maxActive && this.#share.mayRunAnother(caller, calls)) {
          turn();
          return;
        }
        state = 'waiting';
        calls.waiting.push(turn);
        this.#turns.add(caller);
        this.#dispatch();
      },
      release: () => {
        if (state === 'released') return;
        if (state === 'waiting' && turn) {
          calls.waiting.splice(calls.waiting.indexOf(turn), 1);
          if (calls.waiting.length === 0) this.#turns.delete(caller);
        }
        const wasActive = state === 'active';
        state = 'released';
        this.#total -= 1;
        calls.inFlight -= 1;
        if (wasActive) {
          calls.active -= 1;
          this.#active -= 1;
        }
        if (calls.inFlight === 0) this.#callers.delete(caller);
        if (wasActive) this.#dispatch();
      },
    };
  }

  /**
   * Gives free active slots to waiting calls, one caller at a time in turn (round robin over the
   * callers that wait), so a caller with a thousand queued calls and one with a single call each
   * get the next slot in their turn: the single call never waits behind the thousand.
   */
  #dispatch(): void {
    if (this.#turns.size > 0 && !this.#ticker) {
      this.#ticker = setInterval(() => {
        if (this.#turns.size > 0) this.#dispatch();
        else this.close();
      }, this.limits.burstTrickleMs);
      this.#ticker.unref();
    }
    let skipped = 0;
    while (this.#active < this.limits.maxActive && this.#turns.size > 0 && skipped < this.#turns.size) {
      const caller = this.#turns.values().next().value as string;
      this.#turns.delete(caller);
      const calls = this.#callers.get(caller);
      if (!calls || calls.waiting.length === 0) continue;
      if (!this.#share.mayRunAnother(caller, calls)) {
        this.#turns.add(caller); // at its own limit: back of the line, try the next caller
        skipped += 1;
        continue;
      }
      skipped = 0;
      const next = calls.waiting.shift();
      if (calls.waiting.length > 0) this.#turns.add(caller); // back of the line for its next turn
      next?.();
    }
  }

  /** The interceptor: after authentication (it needs the caller), before decoding. */
  interceptor(): grpc.ServerInterceptor {
    return admissionInterceptor(this, this.#prefixes, this.#metrics, this.#exempt);
  }
}
