/**
 * A bound on log lines that strangers can cause. A flood of failed handshakes or refused
 * connections writes at most `perInterval` lines per kind per interval; the next line written
 * for that kind says how many were left out, so the count is never lost.
 */
import type { Logger } from './logger.js';

export class LogThrottle {
  readonly #logger: Logger;
  readonly #perInterval: number;
  readonly #intervalMs: number;
  readonly #kinds = new Map<string, { windowStart: number; written: number; suppressed: number }>();

  constructor(logger: Logger, options: { perInterval?: number; intervalMs?: number } = {}) {
    this.#logger = logger;
    this.#perInterval = options.perInterval ?? 10;
    this.#intervalMs = options.intervalMs ?? 10_000;
  }

  /** Logs `message` at `level` unless `kind` is over its budget for this interval. */
  log(level: 'info' | 'warn', kind: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    let state = this.#kinds.get(kind);
    if (!state || now - state.windowStart >= this.#intervalMs) {
      const suppressed = state?.suppressed ?? 0;
      state = { windowStart: now, written: 0, suppressed: 0 };
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
