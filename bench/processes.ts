/**
 * The orchestrator's child processes: every one is tracked and killed when the orchestrator
 * exits, and every resource a run makes (children, the bench database, the work directory)
 * registers a cleanup, run in reverse order however the run ends (normally, on an error, on
 * SIGINT or SIGTERM).
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { errorMessage } from './common.js';

/** The project's CLI, as deployed. */
export const BIN = fileURLToPath(new URL('../../bin/task-broker.js', import.meta.url));
/** A script beside this one (in dist/bench/). */
export const HERE = (file: string) => fileURLToPath(new URL(file, import.meta.url));

/** Run in reverse order by cleanUp(); a step of the run may also pop back to a mark of its own. */
export const cleanups: Array<() => Promise<void> | void> = [];
const children = new Set<ChildProcess>();

export async function cleanUp(): Promise<void> {
  while (cleanups.length > 0) {
    const fn = cleanups.pop();
    try {
      await fn?.();
    } catch (err) {
      console.error(`bench: cleanup: ${errorMessage(err)}`);
    }
  }
}

/** Kills every child when the orchestrator exits, and cleans up on SIGINT and SIGTERM. */
export function cleanUpOnExit(): void {
  process.on('exit', () => {
    for (const child of children) child.kill('SIGKILL');
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`bench: ${signal}, cleaning up`);
      void cleanUp().finally(() => process.exit(130));
    });
  }
}

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Asks the child to stop (a signal, or e.g. a message) and waits for it to exit; SIGKILL after `limitMs`. */
export async function stopChild(child: ChildProcess, ask: NodeJS.Signals | (() => void) = 'SIGTERM', limitMs = 30_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  if (typeof ask === 'function') ask();
  else child.kill(ask);
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  await exited;
  clearTimeout(timer);
}

/** The child's first message that `accept` takes; rejects on a 'failed' message, on its exit, or after `limitMs`. */
export function waitForMessage<T extends { type: string }>(child: ChildProcess, what: string, accept: (m: T) => boolean, limitMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(() => reject(new Error(`${what}: no answer within ${limitMs} ms`))), limitMs);
    const onMessage = (m: T) => {
      if (m.type === 'failed') finish(() => reject(new Error(`${what}: ${(m as unknown as { message: string }).message}`)));
      else if (accept(m)) finish(() => resolve(m));
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => finish(() => reject(new Error(`${what}: process exited (${code ?? signal})`)));
    const finish = (fn: () => void) => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      fn();
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}
