/**
 * A bound on log lines that strangers (or one caller's flood) can cause. A flood of failed
 * handshakes, refused connections or refused calls writes at most `perInterval` lines per kind
 * per interval; the next line written for that kind says how many were left out.
 */
import type { Logger } from './logger.js';

export class LogThrottle {
  readonly #logger: Logger;
  readonly #perInterval: number;
  readonly #intervalMs: number;
  readonly #kinds = new Map<string, { windowStart: number; written: number; suppressed: number }>();

  readonly #maxKinds: number;

  constructor(logger: Logger, options: { perInterval?: number; intervalMs?: number; maxKinds?: number } = {}) {
    this.#logger = logger;
    this.#perInterval = options.perInterval ?? 10;
    this.#intervalMs = options.intervalMs ?? 10_000;
    this.#maxKinds = options.maxKinds ?? 100;
  }

  /** Logs `message` at `level` unless `kind` is over its budget for this interval. */
  log(level: 'info' | 'warn', kind: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    let state = this.#kinds.get(kind);
    if (!state || now - state.windowStart >= this.#intervalMs) {
      const suppressed = state?.suppressed ?? 0;
      state = { windowStart: now, written: 0, suppressed: 0 };
      // Kinds are bounded too: the oldest is forgotten first (its count with it).
      if (!this.#kinds.has(kind) && this.#kinds.size >= this.#maxKinds) this.#kinds.delete(this.#kinds.keys().next().value as string);
      this.#kinds.set(kind, state);
      if (suppressed > 0) fields = { ...fields, suppressedSinceLastLine: suppressed };
    }
    if (state.written >= this.#perInterval) {
      state.suppressed += 1;
      return;
    }
    state.written += 1;
    this.#logger[level](fields, message);
  }
}
