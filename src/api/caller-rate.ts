/**
 * Per-caller rate limits: a token bucket for each SPIFFE ID, refilled at `callerRatePerSecond`
 * up to `callerBurst` tokens. At most MAX_BUCKETS callers are remembered; the one idle longest
 * is forgotten first, which costs nothing, since a bucket left alone that long is full again.
 *
 * Apart from admission.ts, whose subject is calls in flight: this is the one piece of admission
 * that looks at time between calls.
 */
import type { AdmissionLimits } from './admission.js';

/** Token buckets kept for callers at most; the idlest are forgotten first (a full bucket is no loss). */
const MAX_BUCKETS = 10_000;

interface Bucket {
  tokens: number;
  at: number;
}

export class CallerRateLimiter {
  readonly #limits: Pick<AdmissionLimits, 'callerRatePerSecond' | 'callerBurst'>;
  readonly #buckets = new Map<string, Bucket>();

  /** Reads the limits on every call, as CallAdmission's own limits are read. */
  constructor(limits: Pick<AdmissionLimits, 'callerRatePerSecond' | 'callerBurst'>) {
    this.#limits = limits;
  }

  /** 0 when the caller may go now, else milliseconds until its bucket holds a token. */
  take(caller: string): number {
    const rate = this.#limits.callerRatePerSecond;
    if (rate <= 0) return 0;
    const now = performance.now();
    let bucket = this.#buckets.get(caller);
    if (bucket) {
      this.#buckets.delete(caller); // re-inserted below: the map's order is least recently used first
      bucket.tokens = Math.min(this.#limits.callerBurst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
      bucket.at = now;
    } else {
      bucket = { tokens: this.#limits.callerBurst, at: now };
      if (this.#buckets.size >= MAX_BUCKETS) this.#buckets.delete(this.#buckets.keys().next().value as string);
    }
    this.#buckets.set(caller, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - bucket.tokens) / rate) * 1000);
  }
}
