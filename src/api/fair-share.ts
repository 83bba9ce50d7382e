/**
 * Fair shares of the active slots: which caller may start another call now. A caller alone may
 * use every slot; among several, a caller without a burst behind it goes into any free slot in
 * its turn, and a burst runs within an equal share, and only as a trickle while callers without
 * a burst are active.
 *
 * Apart from admission.ts, which counts calls and keeps the line of waiting callers: this is the
 * rule it asks each time a slot is free, with the little memory the rule needs (who started a
 * call in the last second, when a light caller and a trickle last did).
 */
import type { AdmissionLimits } from './admission.js';

/** A caller with more calls in flight than this many times maxActive is a burst (and waits its share). */
const BURST_FACTOR = 2;
/**
 * While callers without a burst are active, a burst runs this many calls at once, and more only
 * as a trickle: each of its calls is event-loop and database work the others' calls queue behind.
 */
const BURST_ACTIVE_WHILE_SHARED = 2;
/** A caller counts among those sharing the broker for this long after it last started a call. */
const SHARING_WINDOW_MS = 1_000;

/** What the rule looks at of one caller's calls. */
export interface CallerLoad {
  readonly inFlight: number;
  readonly active: number;
}

export class FairShare {
  readonly #limits: Pick<AdmissionLimits, 'maxActive' | 'maxInFlightPerCaller' | 'burstTrickleMs'>;
  /** Callers that started a call within the sharing window, and when they last did (oldest first). */
  readonly #recent = new Map<string, number>();
  /** When a caller without a burst last started a call (-Infinity: never). */
  #lastLightAt = -Infinity;
  /** When a burst last started a call in the background (the trickle). */
  #lastTrickleAt = -Infinity;

  /** Reads the limits on every call, as CallAdmission's own limits are read. */
  constructor(limits: Pick<AdmissionLimits, 'maxActive' | 'maxInFlightPerCaller' | 'burstTrickleMs'>) {
    this.#limits = limits;
  }

  /**
   * A caller runs at most its share of the active slots: an equal part among the callers that
   * started a call in the last second (itself included), at least one. The window matters: a
   * closed-loop client pauses between its calls, and a burst that took every slot in that pause
   * would make the client's next call wait behind all of it.
   */
  mayRunAnother(caller: string, calls: CallerLoad): boolean {
    const now = performance.now();
    for (const [c, at] of this.#recent) {
      if (now - at <= SHARING_WINDOW_MS) break; // oldest first: the rest are recent too
      this.#recent.delete(c);
    }
    const sharing = this.#recent.size + (this.#recent.has(caller) ? 0 : 1);
    if (sharing === 1) return true; // alone: every slot (the global limit still holds)
    // A caller without a burst behind it goes on into any free slot (in its turn): one whose
    // calls merely got slower under load must not be held back for it.
    if (!this.#isBurst(calls)) return true;
    // A burst (more calls in flight than the replica runs at once, several times over) runs
    // within an equal share, and while callers without a burst are active, only as a trickle:
    // its calls run back to back, and even one of them started in a gap between the others'
    // calls is one their next call shares the event loop with. The trickle keeps it from
    // starving; it takes its full share once the others have been quiet for a moment.
    const share = Math.max(1, Math.floor(this.#limits.maxActive / sharing));
    if (calls.active >= share) return false;
    if (now - this.#lastLightAt > SHARING_WINDOW_MS) return true;
    if (calls.active < BURST_ACTIVE_WHILE_SHARED) return true;
    if (now - this.#lastTrickleAt < this.#limits.burstTrickleMs) return false;
    this.#lastTrickleAt = now;
    return true;
  }

  /** Remembers that `caller` started a call now (the map stays oldest first). */
  noteActivity(caller: string, calls: CallerLoad): void {
    const now = performance.now();
    this.#recent.delete(caller);
    this.#recent.set(caller, now);
    if (!this.#isBurst(calls)) this.#lastLightAt = now;
  }

  /**
   * More calls in flight than the replica runs at once, several times over, or more than half of
   * what one caller may have in flight: a client that keeps its calls coming as fast as they end.
   */
  #isBurst(calls: CallerLoad): boolean {
    return calls.inFlight > Math.min(BURST_FACTOR * this.#limits.maxActive, this.#limits.maxInFlightPerCaller / 2);
  }
}
