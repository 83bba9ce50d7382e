/**
 * Who the admin is on the wire: an X509-SVID from files (`--svid-cert`, `--svid-key`, with the
 * broker's `--bundle`) or from the SPIFFE Workload API (`--workload-api ADDRESS`, or
 * SPIFFE_ENDPOINT_SOCKET when no SVID files are given), so an admin pod next to a SPIRE agent needs
 * no init container to write files. Either way the broker must carry `--broker-id`.
 */
import type * as grpc from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import { svidChannelCredentials } from '../../client/credentials.js';
import { x509SourceCredentials } from '../../client/source-credentials.js';
import { workloadApiX509Source } from '../../client/sources.js';
import { parseWorkloadApiAddress } from '../../spiffe/workload-api.js';
import { seeHelp, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from '../options.js';

export const adminIdentityOptions: Record<string, OptionSpec> = {
  'svid-cert': {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_SVID_CERT',
    description:
      "Your own X509-SVID certificate chain (PEM, leaf first); its SPIFFE ID must be an admin in the broker's policy. Required with --svid-key and --bundle unless the Workload API is used",
  },
  'svid-key': {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_SVID_KEY',
    description: 'The private key of your X509-SVID (PEM)',
  },
  bundle: {
    type: 'string',
    placeholder: 'FILE',
    env: 'TASK_BROKER_ADMIN_BUNDLE',
    description: "Trust bundle of the broker's trust domain (PEM certificates or SPIFFE bundle JSON), used to verify the broker's certificate",
  },
  'workload-api': {
    type: 'string',
    placeholder: 'ADDRESS',
    description:
      'Take your X509-SVID and the trust bundles from the SPIFFE Workload API (a SPIRE agent) at unix:///path/agent.sock or tcp://IP:PORT instead of files. ' +
      'Without this flag and without --svid-cert/--svid-key, SPIFFE_ENDPOINT_SOCKET is used when it is set',
  },
};

/** How the admin client authenticates, and what to release after the call. */
export interface AdminIdentity {
  credentials: grpc.ChannelCredentials;
  /** Where the broker's trust bundle came from, for error hints. */
  trustSource: string;
  /** How to give a bundle that has the broker's CA, for error hints. */
  bundleAdvice: string;
  /** How to present an SVID the broker accepts, for this kind of identity. */
  svidAdvice: string;
  close(): void;
}

async function readOptionFile(option: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read --${option} ${path}: ${(err as Error).message}`);
  }
}

function text(parsed: ParsedCommand, name: string): string | undefined {
  const value = stringOption(parsed.values, name)?.trim();
  return value ? value : undefined;
}

/** The Workload API address to use, or undefined for SVID files; a contradictory set of flags is a UsageError. */
function workloadApiAddress(spec: CommandSpec, parsed: ParsedCommand, env: NodeJS.ProcessEnv): string | undefined {
  const usage = ` ${seeHelp(spec.name)}`;
  const flag = text(parsed, 'workload-api');
  const files = ['svid-cert', 'svid-key'].filter((name) => text(parsed, name) !== undefined);
  if (flag !== undefined && files.length > 0) throw new UsageError(`--workload-api cannot be combined with ${files.map((f) => `--${f}`).join(', ')}${usage}`);
  const address = flag ?? (files.length === 0 ? env.SPIFFE_ENDPOINT_SOCKET?.trim() || undefined : undefined);
  if (address === undefined) {
    if (files.length === 0) {
      throw new UsageError(
        `give your X509-SVID: --svid-cert and --svid-key (with --bundle), or --workload-api ADDRESS (or set SPIFFE_ENDPOINT_SOCKET)${usage}`,
      );
    }
    return undefined;
  }
  try {
    parseWorkloadApiAddress(address);
  } catch (err) {
    throw new UsageError(`--workload-api${flag === undefined ? ' (SPIFFE_ENDPOINT_SOCKET)' : ''}: ${(err as Error).message}`);
  }
  return address;
}

/** The admin's credentials for a broker that must be `brokerId`; waits at most `timeoutMs` for the Workload API. */
export async function adminIdentity(
  spec: CommandSpec,
  parsed: ParsedCommand,
  brokerId: string,
  timeoutMs: number,
  env: NodeJS.ProcessEnv = process.env,
): Promise<AdminIdentity> {
  const address = workloadApiAddress(spec, parsed, env);
  if (address !== undefined) {
    const source = await workloadApiX509Source({ address, timeoutMs });
    try {
      return {
        credentials: x509SourceCredentials(source, { serverId: brokerId }),
        trustSource: `the bundles of the Workload API at ${address}`,
        bundleAdvice: "the SPIRE agent must hand out the bundle of the broker's trust domain (federate with it)",
        svidAdvice: `the SVID the Workload API at ${address} hands out must be from a trust domain the broker trusts, and the policy must list it as an admin`,
        close: () => source.close(),
      };
    } catch (err) {
      source.close();
      throw err;
    }
  }
  const required = (name: string) => {
    const value = text(parsed, name);
    if (value === undefined) throw new UsageError(`--${name} is required with SVID files (or use --workload-api) ${seeHelp(spec.name)}`);
    return value;
  };
  const paths = { cert: required('svid-cert'), key: required('svid-key'), bundle: required('bundle') };
  const [certChainPem, keyPem, bundle] = await Promise.all([
    readOptionFile('svid-cert', paths.cert),
    readOptionFile('svid-key', paths.key),
    readOptionFile('bundle', paths.bundle),
  ]);
  // Errors name the file and what to do (e.g. a key that is not the certificate's).
  const files = { ...paths, certOption: '--svid-cert', keyOption: '--svid-key', bundleOption: '--bundle' };
  const credentials = svidChannelCredentials({ certChainPem, keyPem, bundle, serverId: brokerId, files });
  return {
    credentials,
    trustSource: `the trust bundle ${paths.bundle}`,
    bundleAdvice: "pass the bundle of the broker's trust domain with --bundle",
    svidAdvice: 'give --svid-cert and --svid-key an SVID from a trust domain the broker trusts (one it has a --bundle for)',
    close: () => undefined,
  };
}
