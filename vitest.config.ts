import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Storage tests start PGlite (~700 MiB each) and talk to a real PostgreSQL; two workers fit the CI machine.
    maxWorkers: 2,
    // Generous, so only a hang trips them (a loaded CI machine runs several times slower), and
    // above the waits inside tests, which fire first and report what they waited for: one CLI
    // process or log line (CLI_TIMEOUT_MS, 120 s, test/helpers/cli.ts) fits in a test, two in a
    // hook. Tests and hooks that do more declare a budget scaled from their work (cliTimeout(n)).
    testTimeout: 150_000,
    hookTimeout: 270_000,
    teardownTimeout: 30_000,
  },
});
