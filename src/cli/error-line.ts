/**
 * What a command prints when it fails (after `task-broker <command>: `): one line, no stack,
 * naming the file or address, what is wrong and what to do. A broken policy file says its line
 * and column; the rest say what they say, on one line.
 */
import { PolicyError } from '../policy/policy.js';
import { policyErrorLine } from '../policy/policy-source.js';

export function errorLine(command: string, err: unknown): string {
  // `policy check` is the command the hint would suggest: it needs no hint of itself.
  if (err instanceof PolicyError) return policyErrorLine(err, { checkHint: command !== 'policy check' });
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/\s*\n\s*/g, ' ').trim();
}
