/**
 * Where the broker gets its current policy: fixed (tests, embedded use) or a file that is
 * followed as it changes. A broken new file leaves the last good policy in force and says why.
 */
import { readFile } from 'node:fs/promises';
import { WatchedFiles } from '../files/watched-files.js';
import type { Logger } from '../observability/logger.js';
import { parsePolicy, PolicyError, type Policy } from './policy.js';

/** How following the policy's source has gone (metrics, readiness detail). */
export interface PolicySourceStatus {
  /** Reloads refused because the new version was broken or unreadable (the last good one stayed). */
  readonly reloadFailures: number;
  readonly lastReloadError?: string;
  readonly lastReloadFailedAt?: Date;
}

export interface PolicySource {
  /** The policy in force; undefined means none, and the caller must deny everything. */
  current(): Policy | undefined;
  status(): PolicySourceStatus;
  /** Called with each new policy once it is in force; returns an unsubscribe function. */
  onChange(listener: (p: Policy) => void): () => void;
  close(): void;
}

/** A policy that never changes; `undefined` means no policy, so everything is denied. */
export class StaticPolicySource implements PolicySource {
  constructor(private readonly policy: Policy | undefined) {}

  current(): Policy | undefined {
    return this.policy;
  }

  status(): PolicySourceStatus {
    return { reloadFailures: 0 };
  }

  onChange(_listener: (p: Policy) => void): () => void {
    return () => undefined;
  }

  close(): void {}
}

export interface FilePolicySourceOptions {
  logger: Logger;
  /** Backup poll interval for the file (default 5 s); 0 disables polling. */
  pollIntervalMs?: number;
}

/** A policy file, re-read when it changes on disk (also through rename-over and `..data` symlink swaps). */
export class FilePolicySource implements PolicySource {
  #policy: Policy;
  readonly #listeners = new Set<(p: Policy) => void>();
  #watcher: WatchedFiles | undefined;
  #status: PolicySourceStatus = { reloadFailures: 0 };

  private constructor(
    readonly path: string,
    policy: Policy,
  ) {
    this.#policy = policy;
  }

  /** Loads `path` (throwing PolicyError when it cannot be read or parsed) and follows its changes. */
  static async load(path: string, options: FilePolicySourceOptions): Promise<FilePolicySource> {
    const log = options.logger.child({ path });
    let source: FilePolicySource | undefined;
    const watcher = new WatchedFiles(
      [path],
      ([content]) => {
        const policy = parsePolicy((content ?? Buffer.alloc(0)).toString('utf8'), path);
        if (source === undefined) {
          source = new FilePolicySource(path, policy);
          log.info({ digest: policy.digest, rules: policy.rules.length, admins: policy.admins.length }, 'policy loaded');
          return;
        }
        const previous = source.#policy.digest;
        source.#policy = policy;
        log.info({ digest: policy.digest, previousDigest: previous, rules: policy.rules.length, admins: policy.admins.length }, 'policy reloaded');
        source.#notify(policy, log);
      },
      {
        pollIntervalMs: options.pollIntervalMs,
        onError: (err) => {
          const reason = err instanceof PolicyError ? err.message : `${path}: ${err.message}`;
          if (source) source.#status = { reloadFailures: source.#status.reloadFailures + 1, lastReloadError: reason, lastReloadFailedAt: new Date() };
          log.error({ err: err.message, keptDigest: source?.current().digest }, `policy reload failed; keeping the last good policy: ${reason}`);
        },
      },
    );
    try {
      await watcher.start();
    } catch (err) {
      watcher.close();
      if (err instanceof PolicyError) throw err;
      throw new PolicyError(path, '', `cannot read the policy file: ${(err as Error).message}`);
    }
    if (source === undefined) {
      // start() resolves only after the first contents were delivered; this is a guard, not a path.
      watcher.close();
      throw new PolicyError(path, '', 'the policy file was not loaded');
    }
    source.#watcher = watcher;
    return source;
  }

  current(): Policy {
    return this.#policy;
  }

  status(): PolicySourceStatus {
    return this.#status;
  }

  onChange(listener: (p: Policy) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Checks the file now; resolves once any change found is in force (or refused). */
  reload(): Promise<void> {
    return this.#watcher?.reload() ?? Promise.resolve();
  }

  close(): void {
    this.#watcher?.close();
    this.#listeners.clear();
  }

  #notify(policy: Policy, log: Logger): void {
    for (const listener of this.#listeners) {
      try {
        listener(policy);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'policy change listener failed');
      }
    }
  }
}

/** Reads and parses a policy file once, without following it (for one-shot tools). */
export async function readPolicyFile(path: string): Promise<Policy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PolicyError(path, '', `cannot read the policy file: ${(err as Error).message}`);
  }
  return parsePolicy(text, path);
}
