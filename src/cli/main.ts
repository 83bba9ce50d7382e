/**
 * The `task-broker` command: dispatches to subcommands and turns failures into exit codes
 * (0 ok, 1 failure, 2 usage).
 */
import { adminCommands } from './admin/commands.js';
import { runAdminGroup } from './admin/help.js';
import { runDev, devSpec } from './dev.js';
import { errorLine } from './error-line.js';
import { devCaInitSpec, devCaMintSpec, runDevCaInit, runDevCaMint } from './dev-ca.js';
import { ExitCode, helpText, parseCommand, UsageError, type CommandSpec, type ParsedCommand } from './options.js';
import { migrateSpec, runMigrate } from './migrate.js';
import { policyCheckSpec, runPolicyCheck } from './policy.js';
import { runServe } from './serve.js';
import { serveSpec } from './serve-options.js';

interface Command {
  spec: CommandSpec;
  run(parsed: ParsedCommand, out: (line: string) => void): Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  serve: { spec: serveSpec, run: (p) => runServe(p) },
  dev: { spec: devSpec, run: runDev },
  migrate: { spec: migrateSpec, run: runMigrate },
  'policy check': { spec: policyCheckSpec, run: runPolicyCheck },
  ...adminCommands,
  'dev-ca init': { spec: devCaInitSpec, run: runDevCaInit },
  'dev-ca mint': { spec: devCaMintSpec, run: runDevCaMint },
};

function topLevelHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length)) + 2;
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.spec.summary}`);
  return `Usage: task-broker <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nRun 'task-broker <command> --help' for a command's options.\n`;
}

/** Finds the longest command name that prefixes argv ("dev-ca mint" before "dev-ca"). */
function resolve(argv: string[]): { name: string; command: Command; rest: string[] } | undefined {
  for (const words of [2, 1]) {
    const name = argv.slice(0, words).join(' ');
    const command = COMMANDS[name];
    if (command && argv.length >= words) return { name, command, rest: argv.slice(words) };
  }
  return undefined;
}

export async function main(argv: string[], io = { out: (s: string) => process.stdout.write(s), err: (s: string) => process.stderr.write(s) }): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    io.out(topLevelHelp());
    return argv.length === 0 ? ExitCode.usage : ExitCode.ok;
  }
  const found = resolve(argv);
  if (!found) {
    // `admin`, `admin --help`, `admin help [COMMAND]`, or an admin command that does not exist.
    if (argv[0] === 'admin') return runAdminGroup(argv.slice(1), io);
    const group = Object.keys(COMMANDS).filter((k) => k.startsWith(`${argv[0]} `));
    io.err(group.length ? `task-broker ${argv[0]}: choose one of: ${group.join(', ')}\n` : `task-broker: unknown command "${argv[0]}"\n\n${topLevelHelp()}`);
    return ExitCode.usage;
  }
  try {
    const parsed = parseCommand(found.command.spec, found.rest);
    if (parsed.help) {
      io.out(helpText(found.command.spec));
      return ExitCode.ok;
    }
    return await found.command.run(parsed, (line) => io.out(`${line}\n`));
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`task-broker ${found.name}: ${err.message}\n`);
      return ExitCode.usage;
    }
    io.err(`task-broker ${found.name}: ${errorLine(found.name, err)}\n`);
    return ExitCode.failure;
  }
}
