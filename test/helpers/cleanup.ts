/**
 * What a test file sets up outside the process (temp dirs, servers, watchers) is undone after it,
 * last first: per file with `tempDirForFile`, per test with `cleanupsAfterEach`. Both register
 * vitest hooks, so call them at the top level of the test file.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';

/** A temp dir made before the file's first test and removed after its last; the getter names it. */
export function tempDirForFile(prefix: string): () => string {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return () => {
    if (!dir) throw new Error('the temp dir exists only while the tests of the file run');
    return dir;
  };
}

export type Cleanup = () => Promise<void> | void;

export interface Cleanups {
  /** Runs `cleanup` after the current test, before the ones pushed earlier. */
  push(cleanup: Cleanup): void;
  /** A fresh temp dir, removed after the current test. */
  tempDir(prefix: string): Promise<string>;
}

export function cleanupsAfterEach(): Cleanups {
  const pending: Cleanup[] = [];
  afterEach(async () => {
    for (const cleanup of pending.splice(0).reverse()) await cleanup();
  });
  return {
    push: (cleanup) => {
      pending.push(cleanup);
    },
    async tempDir(prefix) {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      pending.push(() => rm(dir, { recursive: true, force: true }));
      return dir;
    },
  };
}
