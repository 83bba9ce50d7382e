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
import { callerOf } from '../transport/caller.js';

export interface AdmissionLimits {
  /** Calls one SPIFFE ID may have in flight at once. */
  maxInFlightPerCaller: number;
  /** Sustained calls per second one SPIFFE ID may make; 0: no rate limit. */
  callerRatePerSecond: number;
  /** How many calls above the rate a caller may make in a burst (token bucket size). */
  callerBurst: number;
  /** Calls the whole broker takes in flight at once before it sheds load. */
  maxInFlight: number;
  /** Requests that may wait for a database connection before new calls are shed. */
  maxDatabaseQueue: number;
}

export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = {
  maxInFlightPerCaller: 32,
  callerRatePerSecond: 0,
  callerBurst: 0,
  maxInFlight: 512,
  maxDatabaseQueue: 64,
};

export const RETRY_PUSHBACK_HEADER = 'grpc-retry-pushback-ms';
/** Token buckets kept for callers at most; the idlest are forgotten first (a full bucket is no loss). */
const MAX_BUCKETS = 10_000;

export interface AdmissionOptions {
  limits?: Partial<AdmissionLimits>;
  metrics?: BrokerMetrics;
  /** Requests waiting for a database connection now (the pool's queue). */
  databaseQueue?: () => number;
  /** Only calls to these services are admitted or refused here (health and reflection never are). */
  services: readonly string[];
}

interface Bucket {
  tokens: number;
  at: number;
}

export type Refusal = { code: grpc.status; details: string; retryAfterMs: number; reason: 'caller-in-flight' | 'caller-rate' | 'broker-in-flight' | 'database-queue' };

export class CallAdmission {
  readonly limits: AdmissionLimits;
  readonly #inFlight = new Map<string, number>();
  readonly #buckets = new Map<string, Bucket>();
  readonly #metrics: BrokerMetrics | undefined;
  readonly #databaseQueue: () => number;
  readonly #prefixes: readonly string[];
  #total = 0;

  constructor(options: AdmissionOptions) {
    this.limits = { ...DEFAULT_ADMISSION_LIMITS, ...options.limits };
    if (this.limits.callerRatePerSecond > 0 && this.limits.callerBurst < 1) this.limits.callerBurst = Math.max(1, Math.ceil(this.limits.callerRatePerSecond));
    this.#metrics = options.metrics;
    this.#databaseQueue = options.databaseQueue ?? (() => 0);
    this.#prefixes = options.services.map((s) => `/${s}/`);
  }

  /** Calls in flight now, all callers together. */
  get inFlight(): number {
    return this.#total;
  }

  /** Takes a slot for `caller`, or says why not. The returned release must be called exactly once. */
  admit(caller: string): { release(): void } | Refusal {
    const mine = this.#inFlight.get(caller) ?? 0;
    if (mine >= this.limits.maxInFlightPerCaller) {
      return { code: grpc.status.RESOURCE_EXHAUSTED, reason: 'caller-in-flight', retryAfterMs: 100, details: `too many calls in flight for ${caller}: at most ${this.limits.maxInFlightPerCaller} at once` };
    }
    if (this.#total >= this.limits.maxInFlight) {
      return { code: grpc.status.UNAVAILABLE, reason: 'broker-in-flight', retryAfterMs: 200, details: `the broker is overloaded (${this.#total} calls in flight)` };
    }
    if (this.#databaseQueue() >= this.limits.maxDatabaseQueue) {
      return { code: grpc.status.UNAVAILABLE, reason: 'database-queue', retryAfterMs: 200, details: 'the broker is overloaded (its database connections are all busy)' };
    }
    const wait = this.#takeToken(caller);
    if (wait > 0) {
      return { code: grpc.status.RESOURCE_EXHAUSTED, reason: 'caller-rate', retryAfterMs: wait, details: `${caller} is over its rate of ${this.limits.callerRatePerSecond} calls per second` };
    }
    this.#inFlight.set(caller, mine + 1);
    this.#total += 1;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#total -= 1;
        const left = (this.#inFlight.get(caller) ?? 1) - 1;
        if (left <= 0) this.#inFlight.delete(caller);
        else this.#inFlight.set(caller, left);
      },
    };
  }

  /** 0 when the caller may go now, else milliseconds until its bucket holds a token. */
  #takeToken(caller: string): number {
    const rate = this.limits.callerRatePerSecond;
    if (rate <= 0) return 0;
    const now = performance.now();
    let bucket = this.#buckets.get(caller);
    if (bucket) {
      this.#buckets.delete(caller); // re-inserted below: the map's order is least recently used first
      bucket.tokens = Math.min(this.limits.callerBurst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
      bucket.at = now;
    } else {
      bucket = { tokens: this.limits.callerBurst, at: now };
      if (this.#buckets.size >= MAX_BUCKETS) this.#buckets.delete(this.#buckets.keys().next().value as string);
    }
    this.#buckets.set(caller, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - bucket.tokens) / rate) * 1000);
  }

  /** The interceptor: after authentication (it needs the caller), before decoding. */
  interceptor(): grpc.ServerInterceptor {
    return (descriptor, call) => {
      if (!this.#prefixes.some((p) => descriptor.path.startsWith(p))) return new grpc.ServerInterceptingCall(call);
      let slot: { release(): void } | undefined;
      const release = () => slot?.release();
      return new grpc.ServerInterceptingCall(call, {
        start: (next) => {
          next({
            onReceiveMetadata: (metadata, nextMetadata) => {
              let caller: string;
              try {
                caller = callerOf({ metadata }).spiffeId.toString();
              } catch {
                nextMetadata(metadata); // not authenticated: the authenticator has answered already
                return;
              }
              const admitted = this.admit(caller);
              if ('release' in admitted) {
                slot = admitted;
                nextMetadata(metadata);
                return;
              }
              this.#metrics?.callsShed.inc({ reason: admitted.reason });
              const trailers = new grpc.Metadata();
              trailers.set(RETRY_PUSHBACK_HEADER, String(admitted.retryAfterMs));
              call.sendStatus({ code: admitted.code, details: `${admitted.details}; retry after ${admitted.retryAfterMs} ms`, metadata: trailers });
            },
            onCancel: release,
          });
        },
        sendStatus: (status, next) => {
          release();
          next(status);
        },
      });
    };
  }
}
