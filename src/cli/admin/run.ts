/**
 * What every `task-broker admin` command shares: the connection options, the exit-code
 * contract, and the one runner that takes a command from the table in commands.ts through
 * flags, connection, call and output.
 */
import * as grpc from '@grpc/grpc-js';
import { AdminClient } from '../../client/admin-client.js';
import type { CallOptions } from '../../client/broker-client.js';
import type { TaskBrokerAdminClient } from '../../gen/taskbroker/v1/TaskBrokerAdmin.js';
import { responseType, toProto3Json } from '../../protocol/proto-json.js';
import { SpiffeId } from '../../spiffe/id.js';
import { adminCallErrorLine } from './call-error.js';
import { adminIdentity, adminIdentityOptions } from './identity.js';
import { ExitCode, parseDuration, seeHelp, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from '../options.js';

/** Options every admin command takes: where the broker is, who it must be, who we are. */
export const adminConnectionOptions: Record<string, OptionSpec> = {
  broker: {
    type: 'string',
    placeholder: 'HOST:PORT',
    env: 'TASK_BROKER_ADDRESS',
    default: '127.0.0.1:8443',
    description: "Address of the broker's gRPC (mTLS) listener",
  },
  'broker-id': {
    type: 'string',
    placeholder: 'SPIFFE_ID',
    env: 'TASK_BROKER_ID',
    required: true,
    description:
      "The broker's expected SPIFFE ID, e.g. spiffe://example.org/task-broker: the connection is refused unless the broker's certificate verifies against its trust bundle (--bundle, or the Workload API's) and carries exactly this ID",
  },
  ...adminIdentityOptions,
  timeout: {
    type: 'string',
    placeholder: 'DURATION',
    env: 'TASK_BROKER_ADMIN_TIMEOUT',
    default: '10s',
    description: 'Deadline of each call to the broker (--all makes one call per page), e.g. 500ms, 10s, 1m',
  },
  output: {
    type: 'string',
    short: 'o',
    placeholder: 'FORMAT',
    description: 'table (the default: readable tables and key: value blocks), wide (the tables with more columns) or json (as --json)',
  },
  json: {
    type: 'boolean',
    description:
      'Print exactly one JSON document on stdout, the response (proto3 JSON mapping: lowerCamelCase fields, RFC 3339 timestamps, enum names, defaults included), and nothing else; the same as -o json',
  },
};

/** The output formats of -o/--output: json is --json; table the default text; wide the text with more columns. */
const OUTPUT_FORMATS = ['table', 'wide', 'json'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
/** The text formats a command renders. */
export type TextFormat = Exclude<OutputFormat, 'json'>;

/** -o/--output and --json as one format: an unknown format, or --json with a text format, is a UsageError. */
function outputFormat(spec: CommandSpec, parsed: ParsedCommand): OutputFormat {
  const usage = seeHelp(spec.name);
  const given = stringOption(parsed.values, 'output');
  const json = parsed.values.json === true;
  if (given === undefined) return json ? 'json' : 'table';
  const format = OUTPUT_FORMATS.find((f) => f === given.trim().toLowerCase());
  if (!format) throw new UsageError(`-o/--output must be one of ${OUTPUT_FORMATS.join(', ')}, got "${given}" ${usage}`);
  if (json && format !== 'json') throw new UsageError(`--json and -o ${format} ask for different outputs: give one ${usage}`);
  return format;
}

export const ADMIN_EXIT_NOTES =
  'Exit status: 0 ok; 1 failure (broker unreachable, deadline exceeded, internal error, unreadable files); ' +
  '2 usage error (missing or invalid flag, INVALID_ARGUMENT); 3 denied (PERMISSION_DENIED: not an admin in the policy; ' +
  'UNAUTHENTICATED: the broker did not accept your SVID); 4 NOT_FOUND; 5 conflict (FAILED_PRECONDITION: the task is not in a state ' +
  'that allows it; ALREADY_EXISTS).\n' +
  'Errors are printed to stderr as: task-broker admin <command>: <STATUS>: <details>';

export type Out = (line: string) => void;
export type Err = (text: string) => void;

/** The RPC names of TaskBrokerAdmin, as the generated client spells them (ListTasks, not listTasks). */
export type AdminRpc = Exclude<Extract<keyof TaskBrokerAdminClient, Capitalize<string>>, keyof grpc.Client>;

/**
 * One admin command: its flags, the call it makes, how its answer reads. `Req` is what the
 * command's own flags say, `Res` the response message (proto-loader's object for `rpc`'s
 * response type, which --json prints in the proto3 JSON mapping).
 */
export interface AdminCommandDef<Req, Res extends object> {
  spec: CommandSpec;
  /** The method whose response `call` returns. */
  rpc: AdminRpc;
  /**
   * The command's own flags (the connection's are the runner's); a wrong one is a UsageError.
   * Positional arguments are refused before this is called unless the spec names them (args).
   */
  request(parsed: ParsedCommand): Req;
  call(client: AdminClient, request: Req, options: CallOptions): Promise<Res>;
  /** The text output: `table` by default, `wide` with -o wide (more columns, where the command has more to show). */
  render(response: Res, request: Req, out: Out, format: TextFormat): void;
  /** The exit code once the output is printed (default 0); may explain a failure on stderr. */
  verdict?(response: Res, err: Err, prefix: string, request: Req): number;
}

export interface AdminCommand {
  spec: CommandSpec;
  run: (parsed: ParsedCommand, out: Out) => Promise<number>;
}

const ADMIN_SERVICE = 'taskbroker.v1.TaskBrokerAdmin';

/**
 * The largest response the admin commands take: a delegation tree of 10,000 tasks, or a page of
 * 1,000 audit events, can be more than grpc-js's default of 4 MiB.
 */
const MAX_ADMIN_RESPONSE_BYTES = 64 * 1024 * 1024;

const defaultErr: Err = (text) => {
  process.stderr.write(text);
};

/** The exit code for a gRPC status code (the contract scripts rely on). */
function exitCodeForStatus(code: grpc.status): number {
  switch (code) {
    case grpc.status.OK:
      return ExitCode.ok;
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.UNAUTHENTICATED:
      return ExitCode.denied;
    case grpc.status.NOT_FOUND:
      return ExitCode.notFound;
    case grpc.status.FAILED_PRECONDITION:
    case grpc.status.ALREADY_EXISTS:
      return ExitCode.conflict;
    case grpc.status.INVALID_ARGUMENT:
      return ExitCode.usage;
    default:
      return ExitCode.failure;
  }
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return (
    err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number' && typeof (err as Partial<grpc.ServiceError>).details === 'string'
  );
}

/** A string option that must be present and non-empty. */
export function requiredText(spec: CommandSpec, parsed: ParsedCommand, name: string): string {
  const value = stringOption(parsed.values, name)?.trim();
  if (!value) throw new UsageError(`--${name} must not be empty ${seeHelp(spec.name)}`);
  return value;
}

export function optionalText(parsed: ParsedCommand, name: string): string | undefined {
  const value = stringOption(parsed.values, name)?.trim();
  return value ? value : undefined;
}

function noPositionals(spec: CommandSpec, parsed: ParsedCommand): void {
  if (parsed.positionals.length > 0) {
    throw new UsageError(`unexpected argument "${parsed.positionals[0] ?? ''}" (every value is given with a flag) ${seeHelp(spec.name)}`);
  }
}

interface Connection {
  address: string;
  brokerId: string;
  deadlineMs: number;
  format: OutputFormat;
}

function connection(spec: CommandSpec, parsed: ParsedCommand): Connection {
  const address = requiredText(spec, parsed, 'broker');
  const brokerId = requiredText(spec, parsed, 'broker-id');
  try {
    SpiffeId.parse(brokerId);
  } catch (err) {
    throw new UsageError(`--broker-id must be the broker's SPIFFE ID: ${(err as Error).message}`);
  }
  const timeout = stringOption(parsed.values, 'timeout') ?? '10s';
  const deadlineMs = parseDuration(timeout, '--timeout');
  if (deadlineMs <= 0) throw new UsageError('--timeout must be longer than 0');
  return { address, brokerId, deadlineMs, format: outputFormat(spec, parsed) };
}

/** Prints a command's response (text or JSON) and returns its exit code. */
export function report<Req, Res extends object>(
  def: AdminCommandDef<Req, Res>,
  response: Res,
  request: Req,
  format: OutputFormat,
  out: Out,
  err: Err,
  prefix: string,
): number {
  if (format === 'json') out(JSON.stringify(toProto3Json(responseType(ADMIN_SERVICE, def.rpc), response), null, 2));
  else def.render(response, request, out, format);
  return def.verdict ? def.verdict(response, err, prefix, request) : ExitCode.ok;
}

/**
 * Runs one command: its flags, then the connection's, then the call and its output. A gRPC
 * error becomes its stderr line and exit code; any other error propagates (main prints it and
 * exits 1, or 2 for a UsageError).
 */
async function runAdminCommand<Req, Res extends object>(
  def: AdminCommandDef<Req, Res>,
  parsed: ParsedCommand,
  out: Out,
  err: Err = defaultErr,
): Promise<number> {
  const { spec } = def;
  // A command that names arguments in its usage (spec.args) reads its positionals in request().
  if (!spec.args) noPositionals(spec, parsed);
  const request = def.request(parsed);
  const conn = connection(spec, parsed);
  const identity = await adminIdentity(spec, parsed, conn.brokerId, conn.deadlineMs);
  const client = new AdminClient({
    address: conn.address,
    credentials: identity.credentials,
    channelOptions: { 'grpc.max_receive_message_length': MAX_ADMIN_RESPONSE_BYTES },
  });
  const prefix = `task-broker ${spec.name}`;
  try {
    const response = await def.call(client, request, { deadlineMs: conn.deadlineMs });
    return report(def, response, request, conn.format, out, err, prefix);
  } catch (e) {
    if (!isServiceError(e)) throw e;
    err(`${prefix}: ${adminCallErrorLine(e, { address: conn.address, ...identity })}\n`);
    return exitCodeForStatus(e.code);
  } finally {
    client.close();
    identity.close();
  }
}

/** A table entry as main.ts runs it. */
export function adminCommand<Req, Res extends object>(def: AdminCommandDef<Req, Res>): AdminCommand {
  return { spec: def.spec, run: (parsed, out) => runAdminCommand(def, parsed, out) };
}
