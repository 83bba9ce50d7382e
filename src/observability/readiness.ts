/**
 * Readiness: whether this broker should receive traffic now. A set of named checks (database
 * reachable, migrations applied, SVID present, policy loaded, and whatever else a source
 * contributes) is evaluated periodically and on demand; the verdict drives /readyz and the gRPC
 * health statuses. Once shutdown begins the broker is not ready, whatever the checks say.
 *
 * Liveness (/healthz) is deliberately not here: it answers from the event loop alone, so a
 * database outage makes the broker unready, never restarted.
 */
import type { Logger } from './logger.js';

export type CheckResult =
  { readonly ok: true; readonly detail?: Record<string, unknown> } | { readonly ok: false; readonly reason: string; readonly detail?: Record<string, unknown> };

export interface ReadinessCheck {
  /** Short, stable name: a key of the /readyz body and a metric label. */
  readonly name: string;
  /** How long the check may take before it counts as failed; default: the Readiness default. */
  readonly timeoutMs?: number;
  /** Resolves with the outcome; throwing counts as failing with the error's message. */
  run(): CheckResult | Promise<CheckResult>;
}

export interface CheckReport {
  readonly ok: boolean;
  readonly reason?: string;
  readonly detail?: Record<string, unknown>;
  readonly durationMs: number;
}

export interface ReadinessReport {
  readonly ready: boolean;
  readonly shuttingDown: boolean;
  /** When the checks were last evaluated (ISO 8601); undefined before the first evaluation. */
  readonly checkedAt?: string;
  readonly checks: Readonly<Record<string, CheckReport>>;
}

export interface ReadinessOptions {
  logger: Logger;
  /** How often the checks run on their own; default 5 s, 0: only on demand. */
  intervalMs?: number;
  /** Default per-check timeout; default 2 s. */
  timeoutMs?: number;
  clock?: () => Date;
}

const NOT_EVALUATED: ReadinessReport = { ready: false, shuttingDown: false, checks: {} };

export class Readiness {
  readonly #checks = new Map<string, ReadinessCheck>();
  readonly #running = new Map<string, Promise<CheckResult>>();
  readonly #listeners = new Set<(report: ReadinessReport) => void>();
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #clock: () => Date;
  #report: ReadinessReport = NOT_EVALUATED;
  #evaluatedAt = 0;
  #evaluation: Promise<ReadinessReport> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #shuttingDown = false;

  constructor(options: ReadinessOptions) {
    this.#log = options.logger.child({ component: 'readiness' });
    this.#intervalMs = options.intervalMs ?? 5_000;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
    this.#clock = options.clock ?? (() => new Date());
  }

  /** Adds a check; names are unique. */
  add(check: ReadinessCheck): this {
    if (this.#checks.has(check.name)) throw new Error(`readiness check ${check.name} is already registered`);
    this.#checks.set(check.name, check);
    return this;
  }

  get ready(): boolean {
    return this.#report.ready;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** The outcome of the last evaluation. */
  get report(): ReadinessReport {
    return this.#report;
  }

  /** Called with each report whose verdict (ready or not) differs from the previous one. */
  onChange(listener: (report: ReadinessReport) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Starts the periodic evaluation (the timer does not keep the process alive). */
  start(): void {
    if (this.#timer || this.#intervalMs <= 0 || this.#shuttingDown) return;
    this.#timer = setInterval(() => void this.evaluate(), this.#intervalMs);
    this.#timer.unref();
  }

  /** Runs every check now; concurrent callers share one evaluation. */
  evaluate(): Promise<ReadinessReport> {
    if (this.#shuttingDown) return Promise.resolve(this.#report);
    this.#evaluation ??= this.#evaluate().finally(() => (this.#evaluation = undefined));
    return this.#evaluation;
  }

  /** The last report if it is at most `maxAgeMs` old, else a new evaluation. */
  async fresh(maxAgeMs: number): Promise<ReadinessReport> {
    if (this.#shuttingDown || (this.#evaluatedAt > 0 && Date.now() - this.#evaluatedAt < maxAgeMs)) return this.#report;
    return this.evaluate();
  }

  /** Not ready from now on (shutdown began); stops the timer and tells the listeners. */
  shutdown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    this.#stopTimer();
    this.#publish({ ...this.#report, ready: false, shuttingDown: true });
  }

  /** Stops the timer and waits for an evaluation in progress, so nothing runs after the resources are released. */
  async close(): Promise<void> {
    this.#stopTimer();
    await this.#evaluation;
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async #evaluate(): Promise<ReadinessReport> {
    const entries = await Promise.all([...this.#checks.values()].map(async (check) => [check.name, await this.#runCheck(check)] as const));
    const checks = Object.fromEntries(entries);
    const ready = entries.every(([, r]) => r.ok);
    this.#evaluatedAt = Date.now();
    // A shutdown that began during the evaluation wins.
    if (!this.#shuttingDown) this.#publish({ ready, shuttingDown: false, checkedAt: this.#clock().toISOString(), checks });
    return this.#report;
  }

  async #runCheck(check: ReadinessCheck): Promise<CheckReport> {
    const started = performance.now();
    // A check still running from the previous evaluation (a slow database) is awaited, not repeated.
    let running = this.#running.get(check.name);
    if (!running) {
      running = Promise.resolve()
        .then(() => check.run())
        .catch((err: unknown): CheckResult => ({ ok: false, reason: err instanceof Error ? err.message : String(err) }))
        .finally(() => this.#running.delete(check.name));
      this.#running.set(check.name, running);
    }
    const timeoutMs = check.timeoutMs ?? this.#timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<CheckResult>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, reason: `no answer within ${timeoutMs} ms` }), timeoutMs);
      timer.unref();
    });
    const result = await Promise.race([running, timeout]);
    clearTimeout(timer);
    const durationMs = Math.round((performance.now() - started) * 1000) / 1000;
    return result.ok
      ? { ok: true, durationMs, ...(result.detail ? { detail: result.detail } : {}) }
      : { ok: false, reason: result.reason, durationMs, ...(result.detail ? { detail: result.detail } : {}) };
  }

  #publish(report: ReadinessReport): void {
    const previous = this.#report;
    this.#report = report;
    const changed = previous === NOT_EVALUATED || previous.ready !== report.ready || previous.shuttingDown !== report.shuttingDown;
    if (!changed) return;
    if (report.shuttingDown) {
      this.#log.info('not ready: shutting down');
    } else if (report.ready) {
      this.#log.info({ checks: Object.keys(report.checks) }, 'ready');
    } else {
      const failing = Object.fromEntries(Object.entries(report.checks).flatMap(([name, r]) => (r.ok ? [] : [[name, r.reason]])));
      this.#log.warn({ failing }, 'not ready');
    }
    for (const listener of this.#listeners) {
      try {
        listener(report);
      } catch (err) {
        this.#log.error({ err: (err as Error).message }, 'readiness listener failed');
      }
    }
  }
}
