/**
 * Reloads a small set of files when they change: trust bundles, the broker's own SVID, the policy.
 *
 * Files are watched through their directories, because the usual ways of replacing them
 * (rename over, Kubernetes' `..data` symlink swap) replace the inode a file watch would follow.
 * A poll backs up the watcher on filesystems where events are unreliable. A change is delivered
 * only when the bytes differ from the last contents delivered; a broken new version (or a read
 * failure) is reported once and the caller keeps its last good state, and the same good bytes
 * coming back after it are not delivered again.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface WatchedFilesOptions {
  /** Backup poll interval; 0 disables polling. */
  pollIntervalMs?: number;
  /** Coalesces the burst of events one replacement produces (and a cert written just before its key). */
  debounceMs?: number;
  /** Called when reading fails or `onContents` throws; the previous contents stay in force. */
  onError?: (err: Error) => void;
}

export type ContentsHandler = (contents: Buffer[]) => void | Promise<void>;

export class WatchedFiles {
  readonly #paths: readonly string[];
  readonly #onContents: ContentsHandler;
  readonly #options: Required<WatchedFilesOptions>;
  readonly #watchers: FSWatcher[] = [];
  #poll: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  /** Digest of the contents last delivered (and accepted). */
  #lastDelivered = '';
  /** The failure last reported (a read error code, or the digest of contents refused), so each is reported once. */
  #lastFailure = '';
  #reloading: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(paths: readonly string[], onContents: ContentsHandler, options: WatchedFilesOptions = {}) {
    this.#paths = paths;
    this.#onContents = onContents;
    this.#options = {
      pollIntervalMs: options.pollIntervalMs ?? 5_000,
      debounceMs: options.debounceMs ?? 150,
      onError: options.onError ?? (() => undefined),
    };
  }

  /** Reads the files once and delivers them; throws if that first load fails, so startup fails loudly. */
  async start(): Promise<void> {
    const contents = await Promise.all(this.#paths.map((p) => readFile(p)));
    await this.#onContents(contents);
    this.#lastDelivered = digest(contents);
    // Closed while the first load was in flight: follow nothing.
    if (this.#closed) return;
    for (const dir of new Set(this.#paths.map((p) => dirname(p)))) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule());
        watcher.on('error', () => undefined); // the directory went away; the poll keeps trying
        this.#watchers.push(watcher);
      } catch {
        // Directory not watchable (e.g. some network filesystems): the poll covers it.
      }
    }
    if (this.#options.pollIntervalMs > 0) {
      // The poll checks directly: debouncing it would let a short interval starve the check.
      this.#poll = setInterval(() => void this.reload(), this.#options.pollIntervalMs);
      this.#poll.unref();
    }
  }

  /** Checks the files now; resolves when that check (and any change it found) has been handled. */
  reload(): Promise<void> {
    this.#reloading = this.#reloading.then(() => this.#check());
    return this.#reloading;
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#poll);
    clearTimeout(this.#debounce);
    for (const w of this.#watchers) w.close();
  }

  #schedule(): void {
    if (this.#closed) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.reload(), this.#options.debounceMs);
    this.#debounce.unref();
  }

  async #check(): Promise<void> {
    if (this.#closed) return;
    let contents: Buffer[];
    try {
      contents = await Promise.all(this.#paths.map((p) => readFile(p)));
    } catch (err) {
      if (!this.#closed) this.#report(`read:${(err as NodeJS.ErrnoException).code ?? 'error'}`, err as Error);
      return;
    }
    if (this.#closed) return;
    const seen = digest(contents);
    if (seen === this.#lastDelivered) {
      this.#lastFailure = ''; // back to what is in force: nothing to deliver
      return;
    }
    if (seen === this.#lastFailure) return;
    try {
      await this.#onContents(contents);
      this.#lastDelivered = seen;
      this.#lastFailure = '';
    } catch (err) {
      this.#report(seen, err as Error);
    }
  }

  /** Reports a failure once per distinct failure, not on every poll. */
  #report(failure: string, err: Error): void {
    if (failure === this.#lastFailure) return;
    this.#lastFailure = failure;
    this.#options.onError(err);
  }
}

function digest(contents: readonly Buffer[]): string {
  const hash = createHash('sha256');
  for (const c of contents) hash.update(createHash('sha256').update(c).digest());
  return hash.digest('hex');
}
