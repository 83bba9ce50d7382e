/**
 * Readiness checks for the replica's own capacity, as opposed to its dependencies: can it still
 * write (a database that answers pings but refuses every INSERT is no database for a broker that
 * records everything), and does it have file descriptors left for new connections and reloads.
 * Both are about this replica, never about one client's burst.
 */
import { readdir, readFile } from 'node:fs/promises';
import type { ReadinessCheck } from './readiness.js';

/** What the writes check needs from the store (Store fits). */
export interface WriteProbe {
  readonly writes: { readonly consecutiveFailures: number; readonly lastFailure: { reason: string; kind: string; at: Date } | undefined };
  probeWrites(): Promise<void>;
}

/**
 * Fails after `threshold` write transactions in a row failed for a database reason. While failing
 * (no traffic reaches an unready replica, so no real write can prove recovery) each evaluation
 * runs a write probe that changes nothing; once the probe succeeds the replica is ready again.
 */
export function writesCheck(store: WriteProbe, options: { threshold?: number; timeoutMs?: number } = {}): ReadinessCheck {
  const threshold = options.threshold ?? 5;
  let failing = false;
  return {
    name: 'writes',
    timeoutMs: options.timeoutMs ?? 2_000,
    run: async () => {
      const { consecutiveFailures, lastFailure } = store.writes;
      if (!failing && consecutiveFailures < threshold) return { ok: true, detail: { consecutiveFailures } };
      failing = true;
      try {
        await store.probeWrites();
      } catch (err) {
        return {
          ok: false,
          reason: `${consecutiveFailures} write transactions failed in a row${lastFailure ? ` (last: ${lastFailure.reason})` : ''} and a write probe fails too: ${(err as Error).message}`,
          detail: { consecutiveFailures },
        };
      }
      failing = false;
      return { ok: true, detail: { consecutiveFailures, recoveredByProbe: true } };
    },
  };
}

/** Open file descriptors and the soft limit, from /proc (Linux); undefined elsewhere. */
export async function fileDescriptorUse(): Promise<{ open: number; limit: number } | undefined> {
  try {
    const [entries, limits] = await Promise.all([readdir('/proc/self/fd'), readFile('/proc/self/limits', 'utf8')]);
    const limit = openFilesLimit(limits);
    return limit === undefined ? undefined : { open: entries.length, limit };
  } catch {
    return undefined;
  }
}

/** The soft limit on open files from the text of /proc/PID/limits; undefined when unlimited or absent. */
export function openFilesLimit(limits: string): number | undefined {
  const match = /^Max open files\s+(\d+|unlimited)\s+/m.exec(limits);
  return !match || match[1] === 'unlimited' ? undefined : Number(match[1]);
}

/**
 * Fails when the process uses more than `maxShare` of its file descriptor limit: new connections,
 * database connections and file reloads would fail with EMFILE, so new traffic belongs elsewhere.
 */
export function fileDescriptorsCheck(options: { maxShare?: number; use?: () => Promise<{ open: number; limit: number } | undefined> } = {}): ReadinessCheck {
  const maxShare = options.maxShare ?? 0.9;
  const use = options.use ?? fileDescriptorUse;
  return {
    name: 'file_descriptors',
    run: async () => {
      const now = await use();
      if (!now) return { ok: true, detail: { supported: false } };
      const detail = { open: now.open, limit: now.limit };
      if (now.open > now.limit * maxShare) {
        return {
          ok: false,
          reason: `${now.open} of ${now.limit} file descriptors in use (over ${Math.round(maxShare * 100)}%): new connections and file reloads would fail`,
          detail,
        };
      }
      return { ok: true, detail };
    },
  };
}
