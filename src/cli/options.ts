/**
 * Command-line options with environment-variable fallbacks and generated help, on top of
 * node:util parseArgs. One spec per command gives parsing, `--help` and the README's reference.
 */
import { parseArgs } from 'node:util';

export interface OptionSpec {
  type: 'string' | 'boolean';
  description: string;
  /** Environment variable read when the flag is absent. For repeatable options: comma-separated. */
  env?: string;
  multiple?: boolean;
  default?: string;
  placeholder?: string;
  required?: boolean;
  /** A one-letter alias, e.g. "o" for -o. */
  short?: string;
}

export interface CommandSpec {
  /** e.g. "serve" or "admin revoke-task". */
  name: string;
  summary: string;
  /** Extra usage after the options, e.g. "<task-id>". */
  args?: string;
  options: Record<string, OptionSpec>;
  /** Paragraphs printed after the option list. */
  notes?: string;
}

/** Exit codes scripts can rely on. */
export const ExitCode = {
  ok: 0,
  /** Anything else: unreachable broker, internal error, bad files. */
  failure: 1,
  usage: 2,
  /** Refused: PERMISSION_DENIED or UNAUTHENTICATED, or a policy decision that denies. */
  denied: 3,
  notFound: 4,
  /** The state does not allow it: FAILED_PRECONDITION, ALREADY_EXISTS. */
  conflict: 5,
} as const;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** What a usage error ends with: where to read the command's usage, e.g. `(see 'task-broker admin get-task --help')`. */
export function seeHelp(command: string): string {
  return `(see 'task-broker ${command} --help')`;
}

export interface ParsedCommand {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  help: boolean;
}

/** Parses argv for `spec`; unknown flags are usage errors, env vars fill what flags leave out. */
export function parseCommand(spec: CommandSpec, argv: string[], env: NodeJS.ProcessEnv = process.env): ParsedCommand {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, opt] of Object.entries(spec.options)) {
    options[name] = { type: opt.type, ...(opt.multiple ? { multiple: true } : {}), ...(opt.short ? { short: opt.short } : {}) };
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.replace(/\. To specify.*$/s, '')} ${seeHelp(spec.name)}`);
  }
  const values: ParsedCommand['values'] = {};
  if (parsed.values.help === true) return { values, positionals: parsed.positionals, help: true };
  for (const [name, opt] of Object.entries(spec.options)) {
    let value = parsed.values[name] as string | boolean | string[] | undefined;
    const fromEnv = opt.env ? env[opt.env] : undefined;
    if (value === undefined && fromEnv !== undefined && fromEnv !== '') {
      if (opt.type === 'boolean') value = ['1', 'true', 'yes'].includes(fromEnv.toLowerCase());
      else
        value = opt.multiple
          ? fromEnv
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean)
          : fromEnv;
    }
    if (value === undefined && opt.default !== undefined) value = opt.multiple ? [opt.default] : opt.default;
    if (value === undefined && opt.required) {
      throw new UsageError(`--${name} is required${opt.env ? ` (or set ${opt.env})` : ''} ${seeHelp(spec.name)}`);
    }
    values[name] = value;
  }
  return { values, positionals: parsed.positionals, help: false };
}

export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: task-broker ${spec.name} [options]${spec.args ? ` ${spec.args}` : ''}`, '', spec.summary, '', 'Options:'];
  const rows = Object.entries(spec.options).map(([name, opt]) => {
    const flag = `${opt.short ? `-${opt.short}, ` : ''}--${name}${opt.type === 'string' ? ` ${opt.placeholder ?? 'VALUE'}` : ''}`;
    const extras = [
      opt.multiple ? 'repeatable' : '',
      opt.required ? 'required' : '',
      opt.default !== undefined ? `default: ${opt.default}` : '',
      opt.env ? `env: ${opt.env}` : '',
    ].filter(Boolean);
    return [flag, `${opt.description}${extras.length ? ` (${extras.join('; ')})` : ''}`] as const;
  });
  rows.push(['-h, --help', 'Show this help']);
  const width = Math.max(...rows.map(([f]) => f.length)) + 2;
  for (const [flag, text] of rows) lines.push(`  ${flag.padEnd(width)}${text}`);
  if (spec.notes) lines.push('', spec.notes);
  return lines.join('\n') + '\n';
}

export function stringOption(values: ParsedCommand['values'], name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** A string option that must have a value (parseCommand has filled in its default, if it has one). */
export function textOption(values: ParsedCommand['values'], name: string): string {
  const text = stringOption(values, name);
  if (text === undefined) throw new UsageError(`--${name} is required`);
  return text;
}

export function listOption(values: ParsedCommand['values'], name: string): string[] {
  const v = values[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "5m", "24h", "7d", "1500ms" -> milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(text.trim());
  if (!match) throw new UsageError(`${what} must look like 90s, 5m, 24h or 7d, got "${text}"`);
  return Number(match[1]) * (DURATION_UNITS[match[2] ?? 's'] ?? 1);
}

/** "host:port" or "[v6]:port" -> parts; port 0 means "any free port". */
export function parseListenAddress(text: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = Number(match?.[3]);
  if (!match || port > 65_535) throw new UsageError(`listen address must be HOST:PORT, got "${text}"`);
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
}
