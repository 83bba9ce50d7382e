/**
 * Runs the real `task-broker` binary (bin/task-broker.js on the built dist/) as a child process.
 *
 * Waits end on an event (the process exits, the log line appears), not on a clock: their
 * timeouts only catch a hang, and then report the process output. A test that runs several
 * processes one after another gets a budget scaled from that with `cliTimeout(steps)`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runProcess, type ProcessResult } from './process.js';

export const BIN = fileURLToPath(new URL('../../bin/task-broker.js', import.meta.url));

/**
 * How long one CLI process (or one wait for a log line) may take before it counts as hung. Far
 * above what a loaded CI machine needs (seconds), since the process exiting or the line
 * appearing ends the wait anyway.
 */
export const CLI_TIMEOUT_MS = 120_000;

/**
 * A test's timeout when it runs `steps` CLI processes or log waits one after another: each step's
 * own timeout fires first (and reports the process output) before the test's does.
 */
export function cliTimeout(steps: number): number {
  return steps * CLI_TIMEOUT_MS + 30_000;
}

export type CliResult = ProcessResult;

export function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  const timeoutMs = options.timeoutMs ?? CLI_TIMEOUT_MS;
  return runProcess([process.execPath, BIN, ...args], {
    env: options.env,
    limitMs: timeoutMs,
    hung: ({ stdout, stderr }) => new Error(`task-broker ${args.join(' ')} did not exit within ${timeoutMs} ms (killed)\nstdout: ${stdout}\nstderr: ${stderr}`),
  });
}

export interface RunningCli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /**
   * Resolves with the first JSON log line for which `match` holds; rejects with the process
   * output when the process exits first, or after `timeoutMs` (default CLI_TIMEOUT_MS: a hang).
   */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

/**
 * The JSON lines of `text`. A line that is not JSON is skipped, and so is the last one while the
 * process may still be writing it (`complete` false).
 */
function jsonLines(text: string, complete: boolean): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = [];
  const all = text.split('\n');
  for (const line of complete ? all : all.slice(0, -1)) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not a log line.
    }
  }
  return lines;
}

export function startCli(args: string[], env: NodeJS.ProcessEnv = {}): RunningCli {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout?.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const w of waiters) w();
  });
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    waitForLog(match, timeoutMs = CLI_TIMEOUT_MS) {
      return new Promise((resolve, reject) => {
        let settled = false;
        const settle = (fn: () => void) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          waiters.delete(onOutput);
          fn();
        };
        const check = (complete = false) => {
          const found = jsonLines(stdout, complete).find(match);
          if (found) settle(() => resolve(found));
        };
        const timer = setTimeout(
          () =>
            settle(() => reject(new Error(`log line not seen within ${timeoutMs} ms (the process is still running)\nstdout: ${stdout}\nstderr: ${stderr}`))),
          timeoutMs,
        );
        const onOutput = () => check();
        waiters.add(onOutput);
        void exited.then((code) => {
          // Everything the process wrote has been read by now ('close' comes after the streams end).
          check(true);
          settle(() => reject(new Error(`process exited (code ${String(code)}) before the log line\nstdout: ${stdout}\nstderr: ${stderr}`)));
        });
        check();
      });
    },
  };
}
