import { defineConfig } from 'vitest/config';

// Generous, so only a hang trips them (a loaded CI machine runs several times slower), and
// above the waits inside tests, which fire first and report what they waited for: one CLI
// process or log line (CLI_TIMEOUT_MS, 120 s, test/helpers/cli.ts) fits in a test, two in a
// hook. Tests and hooks that do more declare a budget scaled from their work (cliTimeout(n)).
const timeouts = { testTimeout: 150_000, hookTimeout: 270_000, teardownTimeout: 30_000 };

export default defineConfig({
  test: {
    pool: 'forks',
    projects: [
      {
        test: {
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: ['test/faults/**'],
          // Storage tests start PGlite (~700 MiB each) and talk to a real PostgreSQL; two workers fit the CI machine.
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
          ...timeouts,
        },
      },
      {
        // The fault tests run real serve processes under load and measure latencies and timeouts
        // against each other: after everything else, one file at a time, so another test file's
        // load is not part of what they measure.
        test: {
          name: 'faults',
          include: ['test/faults/**/*.test.ts'],
          maxWorkers: 1,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
          ...timeouts,
        },
      },
    ],
  },
});
