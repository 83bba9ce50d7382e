/**
 * A bound on the evidence one stranger can force onto someone else's trail. Each refused probe of
 * a task by an identity that does not own it is an `access.denied` event on that task's chain;
 * without a bound, a stranger who learned a task ID could grow the owner's trail without limit
 * (and make every probe a write). Per (actor, task), the first `perWindow` denials of each window
 * are recorded; the rest are counted and the count goes into the next recorded event as
 * `suppressed_denials`, so the trail still says how many probes there were.
 *
 * The state is per replica and bounded (least recently used keys are forgotten first).
 */

export interface DenialThrottleOptions {
  /** Denials recorded per (actor, task) and window; default 10. */
  perWindow?: number;
  /** Window length; default 60 s. */
  windowMs?: number;
  /** (actor, task) pairs remembered at most; default 10,000. */
  maxKeys?: number;
  now?: () => number;
}

interface Window {
  start: number;
  recorded: number;
  suppressed: number;
}

export class DenialThrottle {
  readonly #perWindow: number;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #windows = new Map<string, Window>();

  constructor(options: DenialThrottleOptions = {}) {
    this.#perWindow = options.perWindow ?? 10;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#maxKeys = options.maxKeys ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Whether this denial is recorded; when it is, `suppressed` is how many denials of the same
   * actor on the same task were left out since the last recorded one.
   */
  admit(actor: string, subject: string): { record: true; suppressed: number } | { record: false } {
    const key = `${actor}\n${subject}`;
    const now = this.#now();
    let window = this.#windows.get(key);
    if (window) this.#windows.delete(key); // re-inserted below: the map's order is least recently used first
    if (!window || now - window.start >= this.#windowMs) {
      window = { start: now, recorded: 0, suppressed: window?.suppressed ?? 0 };
    }
    if (this.#windows.size >= this.#maxKeys) this.#windows.delete(this.#windows.keys().next().value as string);
    this.#windows.set(key, window);
    if (window.recorded >= this.#perWindow) {
      window.suppressed += 1;
      return { record: false };
    }
    window.recorded += 1;
    const suppressed = window.suppressed;
    window.suppressed = 0;
    return { record: true, suppressed };
  }
}
