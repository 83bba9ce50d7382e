/**
 * A value read from files and kept current as they change: the policy, the broker's own SVID,
 * a trust bundle.
 *
 * Every new version of the files goes through `parse`; only a version that parses replaces the
 * value, so a broken or half-written file leaves the last good value in force and is reported
 * to `onError` instead. The first load is different: it has no good value to fall back on, so
 * `ready()` rejects and the caller refuses to start.
 */
import { WatchedFiles, type WatchedFilesOptions } from './watched-files.js';

/** Turns the files' text (UTF-8, in the order of the paths) into a value; throws saying why a version is unusable. */
export type ParseFiles<T> = (texts: readonly string[]) => T;

/** `reload`: a new version was refused (unreadable, or `parse` threw). `listener`: a change listener threw. */
export type WatchedValueFailure = 'reload' | 'listener';

export interface WatchedValueOptions extends Pick<WatchedFilesOptions, 'pollIntervalMs' | 'debounceMs'> {
  /** Told about every failure after the first load; the value in force stays what it was. */
  onError?: (err: Error, during: WatchedValueFailure) => void;
}

export type ChangeListener<T> = (value: T, previous: T) => void;

export class WatchedValue<T> {
  readonly #files: WatchedFiles;
  readonly #parse: ParseFiles<T>;
  readonly #onError: (err: Error, during: WatchedValueFailure) => void;
  readonly #listeners = new Set<ChangeListener<T>>();
  // Boxed, so that undefined stays a possible value.
  #loaded: { value: T } | undefined;
  #ready: Promise<T> | undefined;

  constructor(paths: readonly string[], parse: ParseFiles<T>, options: WatchedValueOptions = {}) {
    this.#parse = parse;
    this.#onError = options.onError ?? (() => undefined);
    this.#files = new WatchedFiles(paths, (contents) => this.#deliver(contents), {
      pollIntervalMs: options.pollIntervalMs,
      debounceMs: options.debounceMs,
      onError: (err) => this.#onError(err, 'reload'),
    });
  }

  /**
   * Loads the files once and starts following them; resolves with the first value. Rejects (and
   * stops following) when the first load cannot be read or parsed, without calling onError.
   */
  ready(): Promise<T> {
    this.#ready ??= this.#files.start().then(
      () => this.current(),
      (err: unknown) => {
        this.#files.close();
        throw err;
      },
    );
    return this.#ready;
  }

  /** The last good value. Only defined once ready() has resolved. */
  current(): T {
    if (!this.#loaded) throw new Error('WatchedValue.current() was called before ready() resolved');
    return this.#loaded.value;
  }

  /** Called with each new value after the first, once it is in force; returns the unsubscribe function. */
  onChange(listener: ChangeListener<T>): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Checks the files now; resolves once any change found is in force (or refused). */
  reload(): Promise<void> {
    return this.#files.reload();
  }

  /** Stops following the files; the last value stays readable, listeners hear nothing more. */
  close(): void {
    this.#files.close();
    this.#listeners.clear();
  }

  #deliver(contents: Buffer[]): void {
    // A throw here is the refusal: WatchedFiles rejects the first load with it, reports later ones.
    const value = this.#parse(contents.map((c) => c.toString('utf8')));
    const previous = this.#loaded;
    this.#loaded = { value };
    if (!previous) return;
    for (const listener of [...this.#listeners]) {
      try {
        listener(value, previous.value);
      } catch (err) {
        this.#onError(err as Error, 'listener');
      }
    }
  }
}
