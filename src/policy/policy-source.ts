/**
 * Where the broker gets its current policy: fixed (tests, embedded use) or a file that is
 * followed as it changes. A broken new file leaves the last good policy in force and says why.
 */
import { readFile } from 'node:fs/promises';
import { WatchedValue } from '../files/watched-value.js';
import type { Logger } from '../observability/logger.js';
import { PolicyError, type Policy } from './policy.js';
import { parsePolicy } from './policy-document.js';

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
  readonly #policy: Policy | undefined;

  constructor(policy: Policy | undefined) {
    this.#policy = policy;
  }

  current(): Policy | undefined {
    return this.#policy;
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
  readonly #policy: WatchedValue<Policy>;
  readonly #log: Logger;
  #status: PolicySourceStatus = { reloadFailures: 0 };

  private constructor(
    readonly path: string,
    options: FilePolicySourceOptions,
  ) {
    const log = options.logger.child({ path });
    this.#log = log;
    this.#policy = new WatchedValue([path], ([text = '']) => parsePolicy(text, path), {
      pollIntervalMs: options.pollIntervalMs,
      onError: (err, during) => {
        if (during === 'listener') {
          log.error({ err: err.message }, 'policy change listener failed');
          return;
        }
        const reason = err instanceof PolicyError ? policyErrorLine(err) : `${path}: ${err.message}`;
        this.#status = { reloadFailures: this.#status.reloadFailures + 1, lastReloadError: reason, lastReloadFailedAt: new Date() };
        log.error({ err: err.message, keptDigest: this.current().digest }, `policy reload failed; keeping the last good policy: ${reason}`);
      },
    });
    // Subscribed first, so the line is written before any listener hears of the new policy.
    this.#policy.onChange((policy, previous) => {
      log.info({ digest: policy.digest, previousDigest: previous.digest, rules: policy.rules.length, admins: policy.admins.length }, 'policy reloaded');
    });
  }

  /** Loads `path` (throwing PolicyError when it cannot be read or parsed) and follows its changes. */
  static async load(path: string, options: FilePolicySourceOptions): Promise<FilePolicySource> {
    const source = new FilePolicySource(path, options);
    let policy: Policy;
    try {
      policy = await source.#policy.ready();
    } catch (err) {
      if (err instanceof PolicyError) throw err;
      throw PolicyError.unreadable(path, err);
    }
    source.#log.info({ digest: policy.digest, rules: policy.rules.length, admins: policy.admins.length }, 'policy loaded');
    return source;
  }

  current(): Policy {
    return this.#policy.current();
  }

  status(): PolicySourceStatus {
    return this.#status;
  }

  onChange(listener: (p: Policy) => void): () => void {
    return this.#policy.onChange(listener);
  }

  /** Checks the file now; resolves once any change found is in force (or refused). */
  reload(): Promise<void> {
    return this.#policy.reload();
  }

  close(): void {
    this.#policy.close();
  }
}

/**
 * A PolicyError as one line for a person: the file, the line and column, the field, what is wrong
 * and what to do. `checkHint` adds the command that checks a fixed file offline (not wanted when
 * that command is the one reporting).
 */
export function policyErrorLine(err: PolicyError, { checkHint = true } = {}): string {
  if (err.kind === 'unreadable') {
    return `${err.located}: check the path and that the file is readable`;
  }
  const check = checkHint ? ` (check it with: task-broker policy check --policy ${err.source})` : '';
  return `${err.located}: fix the file${check}`;
}

/** Reads and parses a policy file once, without following it (for one-shot tools). */
export async function readPolicyFile(path: string): Promise<Policy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw PolicyError.unreadable(path, err);
  }
  return parsePolicy(text, path);
}
