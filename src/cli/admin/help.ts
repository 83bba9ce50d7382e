/**
 * `task-broker admin` without a command of the table: `admin --help`, `admin -h` and `admin help`
 * list every admin command, one line each (exit 0); `admin help COMMAND` is that command's
 * `--help`; `admin` alone lists them too but exits 2; an unknown command is one line naming it
 * (with the nearest command's name when it looks like a typo), exit 2.
 */
import { ExitCode, helpText } from '../options.js';
import { adminCommands } from './commands.js';

export interface AdminGroupIo {
  out(text: string): void;
  err(text: string): void;
}

const PREFIX = 'admin ';

/** The admin commands by their own name (list-tasks, not "admin list-tasks"), in table order. */
function commands(): Array<[string, (typeof adminCommands)[string]]> {
  return Object.entries(adminCommands).map(([name, command]) => [name.slice(PREFIX.length), command]);
}

/** The list of admin commands, one line each, and how to get one's options. */
function adminHelpText(): string {
  const list = commands();
  const width = Math.max(...list.map(([name]) => name.length)) + 2;
  return [
    'Usage: task-broker admin <command> [TASK_ID] [options]',
    '',
    "The TaskBrokerAdmin API over mTLS with your own X509-SVID (its SPIFFE ID must be an admin in the broker's policy).",
    '',
    'Commands:',
    ...list.map(([name, command]) => `  ${name.padEnd(width)}${command.spec.summary}`),
    '',
    'Every command takes the connection options (--broker, --broker-id, --svid-cert/--svid-key/--bundle or --workload-api, --timeout)',
    'and -o table|wide|json (--json is -o json). A command about one task takes the task ID as --task or as its argument.',
    "Run 'task-broker admin <command> --help' for a command's options and exit codes.",
    '',
  ].join('\n');
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The command `word` most likely meant: the nearest name within 3 edits, else the one name that starts with it. */
function nearest(word: string): string | undefined {
  const names = commands().map(([name]) => name);
  const scored = names.map((name) => [name, distance(word, name)] as const).sort((x, y) => x[1] - y[1]);
  const best = scored[0];
  if (best && best[1] <= 3) return best[0];
  const prefixed = names.filter((name) => name.startsWith(word));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

/** Runs `task-broker admin ARGS` when ARGS do not start with a known command; returns the exit code. */
export function runAdminGroup(args: readonly string[], io: AdminGroupIo): number {
  const [first, second] = args;
  const pointer = "run 'task-broker admin --help' for the list of commands";
  if (first === undefined) {
    io.out(adminHelpText());
    return ExitCode.usage;
  }
  if (first === '--help' || first === '-h' || (first === 'help' && second === undefined)) {
    io.out(adminHelpText());
    return ExitCode.ok;
  }
  if (first === 'help' && second !== undefined) {
    const command = adminCommands[`${PREFIX}${second}`];
    if (command) {
      io.out(helpText(command.spec));
      return ExitCode.ok;
    }
    return unknown(second, io, pointer);
  }
  if (first.startsWith('-')) {
    io.err(`task-broker admin: give a command before "${first}"; ${pointer}\n`);
    return ExitCode.usage;
  }
  return unknown(first, io, pointer);
}

function unknown(word: string, io: AdminGroupIo, pointer: string): number {
  const guess = nearest(word);
  io.err(`task-broker admin: unknown command "${word}"${guess ? ` (did you mean ${guess}?)` : ''}; ${pointer}\n`);
  return ExitCode.usage;
}
