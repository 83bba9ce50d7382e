/**
 * Runs a command to its end and collects its output: the one way the helpers run a short-lived
 * process (the task-broker CLI, PostgreSQL's initdb and pg_ctl).
 */
import { spawn } from 'node:child_process';

export interface ProcessResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** After this long the process counts as hung and is killed (SIGKILL). */
  limitMs: number;
  /**
   * The error to reject with as soon as the limit is reached, given the output so far. Without
   * it the result is the killed process's (code null), once it has closed.
   */
  hung?: (output: { stdout: string; stderr: string }) => Error;
}

export function runProcess(argv: readonly [string, ...string[]], options: RunOptions): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const [command, ...args] = argv;
    const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      if (options.hung) reject(options.hung({ stdout, stderr }));
    }, options.limitMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
