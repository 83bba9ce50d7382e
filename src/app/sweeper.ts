/**
 * The expiry sweeper: ends tasks past their expiry (and revokes their tokens), then deletes
 * token rows long expired and task results past their retention. Safe in every replica at once: each due task is expired exactly once.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../observability/logger.js';
import type { TaskLifecycle } from '../tasks/lifecycle.js';

export interface SweeperOptions {
  lifecycle: Pick<TaskLifecycle, 'sweepExpired' | 'pruneTokens' | 'purgeResults'>;
  logger: Logger;
  /** How often the sweep runs on its own; 0: only when sweep() is called. */
  intervalMs: number;
  /** Token rows are deleted this long after they expire. */
  tokenRetentionSeconds: number;
}

export interface Sweeper {
  /** Runs one sweep now (also what the timer runs); resolves with the number of tasks expired. */
  sweep(): Promise<number>;
  /** Stops the timer and waits for a sweep in progress. */
  close(): Promise<void>;
}

export function startSweeper(options: SweeperOptions): Sweeper {
  const { lifecycle, logger } = options;
  const sweep = async () => {
    const requestId = `sweep-${randomUUID()}`;
    const expired = await lifecycle.sweepExpired({ requestId });
    const pruned = await lifecycle.pruneTokens(options.tokenRetentionSeconds);
    const purged = await lifecycle.purgeResults();
    if (expired > 0 || pruned > 0 || purged > 0) logger.info({ expired, prunedTokens: pruned, purgedResults: purged, requestId }, 'expiry sweep');
    return expired;
  };
  if (options.intervalMs <= 0) return { sweep, close: () => Promise.resolve() };

  // One sweep at a time: a tick that finds the last one still running skips.
  let sweeping: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    if (sweeping) return;
    sweeping = sweep()
      .catch((err: unknown) => logger.error({ err: (err as Error).message }, 'expiry sweep failed; will retry'))
      .finally(() => (sweeping = undefined));
  }, options.intervalMs);
  timer.unref();
  return {
    sweep,
    async close() {
      clearInterval(timer);
      await sweeping;
    },
  };
}
