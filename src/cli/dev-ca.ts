/**
 * `task-broker dev-ca init|mint`: a local trust domain CA and SVIDs for it, in files.
 */
import type { KeyAlgorithm } from '../devca/certificates.js';
import { initDevCa, mintDevSvid } from '../devca/dev-ca.js';
import { listOption, parseDuration, stringOption, UsageError, type CommandSpec, type OptionSpec, type ParsedCommand } from './options.js';

const KEY_TYPES: readonly KeyAlgorithm[] = ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'ed25519'];

/** --key-type, which both commands take: one of KEY_TYPES, EC P-256 by default. */
function keyTypeOption(what: string): OptionSpec {
  return { type: 'string', placeholder: 'TYPE', default: 'ec-p256', description: `${what}: ${KEY_TYPES.join(', ')}` };
}

/** A dev-ca command's flags: `--dir`, the CA's directory, then the command's own. */
function devCaSpec(command: string, summary: string, dirHelp: string, options: Record<string, OptionSpec>): CommandSpec {
  return { name: `dev-ca ${command}`, summary, options: { dir: { type: 'string', placeholder: 'DIR', required: true, description: dirHelp }, ...options } };
}

export const devCaInitSpec = devCaSpec(
  'init',
  'Create a local trust domain CA in DIR (ca.pem, ca.key). Not for production: the key sits in a file.',
  'Directory for the CA files',
  {
    'trust-domain': { type: 'string', placeholder: 'NAME', required: true, description: 'Trust domain name, e.g. example.org' },
    'key-type': keyTypeOption('CA key type'),
    force: { type: 'boolean', description: 'Replace an existing CA' },
  },
);

export const devCaMintSpec = devCaSpec(
  'mint',
  'Mint an X509-SVID (EC P-256 by default) for a SPIFFE ID from the CA in DIR, into NAME.pem (chain) and NAME.key.',
  'Directory holding the CA (from dev-ca init)',
  {
    'spiffe-id': { type: 'string', placeholder: 'ID', required: true, description: 'SPIFFE ID of the workload, e.g. spiffe://example.org/ns/demo/sa/worker' },
    name: { type: 'string', placeholder: 'NAME', description: "File name stem (default: the ID's path segments joined by '-')" },
    'out-dir': { type: 'string', placeholder: 'DIR', description: 'Where to write the SVID (default: --dir)' },
    ttl: { type: 'string', placeholder: 'DURATION', default: '24h', description: 'Lifetime of the SVID' },
    dns: { type: 'string', multiple: true, placeholder: 'NAME', description: 'Add a DNS SAN' },
    'key-type': keyTypeOption('Key type'),
  },
);

function keyType(parsed: ParsedCommand): KeyAlgorithm {
  const value = stringOption(parsed.values, 'key-type') ?? 'ec-p256';
  if (!KEY_TYPES.includes(value as KeyAlgorithm)) throw new UsageError(`--key-type must be one of ${KEY_TYPES.join(', ')}, got "${value}"`);
  return value as KeyAlgorithm;
}

export async function runDevCaInit(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const files = await initDevCa(stringOption(parsed.values, 'dir') ?? '', stringOption(parsed.values, 'trust-domain') ?? '', {
    key: keyType(parsed),
    force: parsed.values.force === true,
  });
  out(`created CA for trust domain ${files.trustDomain}`);
  out(`  certificate (the trust bundle): ${files.certPath}`);
  out(`  private key:                    ${files.keyPath}`);
  return 0;
}

export async function runDevCaMint(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const svid = await mintDevSvid(stringOption(parsed.values, 'dir') ?? '', stringOption(parsed.values, 'spiffe-id') ?? '', {
    name: stringOption(parsed.values, 'name'),
    outDir: stringOption(parsed.values, 'out-dir'),
    ttlMs: parseDuration(stringOption(parsed.values, 'ttl') ?? '24h', '--ttl'),
    dnsNames: listOption(parsed.values, 'dns'),
    key: keyType(parsed),
  });
  out(`minted X509-SVID for ${svid.spiffeId} (valid until ${svid.notAfter.toISOString()})`);
  out(`  certificate chain: ${svid.certPath}`);
  out(`  private key:       ${svid.keyPath}`);
  return 0;
}
