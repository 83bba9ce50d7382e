/**
 * Reloads a small set of files when they change: trust bundles, the broker's own SVID, the policy.
 *
 * Files are watched through their directories, because the usual ways of replacing them
 * (rename over, Kubernetes' `..data` symlink swap) replace the inode a file watch would follow.
 * A poll backs up the watcher on filesystems where events are unreliable. A change is delivered
 * only when the bytes differ; a broken new version is reported once and the caller keeps its
 * last good state.
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
  #lastSeen = '';
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
    this.#lastSeen = digest(contents);
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
      this.#report(`read:${(err as NodeJS.ErrnoException).code ?? 'error'}`, err as Error);
      return;
    }
    const seen = digest(contents);
    if (seen === this.#lastSeen) return;
    this.#lastSeen = seen;
    try {
      await this.#onContents(contents);
    } catch (err) {
      this.#options.onError(err as Error);
    }
  }

  /** Reports a read failure once per distinct failure, not on every poll. */
  #report(state: string, err: Error): void {
    if (state === this.#lastSeen) return;
    this.#lastSeen = state;
    this.#options.onError(err);
  }
}

function digest(contents: readonly Buffer[]): string {
  const hash = createHash('sha256');
  for (const c of contents) hash.update(createHash('sha256').update(c).digest());
  return hash.digest('hex');
}
