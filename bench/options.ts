/**
 * The bench's command line: the flags, their help text and their checks. `--help` and `--report`
 * are answered here (they run nothing).
 */
import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { errorMessage } from './common.js';
import { printReport, type Report } from './report.js';
import { GROUPS, SCENARIOS, type Scenario } from './scenarios.js';

/** A mistake on the command line: printed with a pointer to --help, exit code 2. */
export class UsageError extends Error {}

const FLAGS: NonNullable<ParseArgsConfig['options']> = {
  seconds: { type: 'string' },
  warmup: { type: 'string' },
  inflight: { type: 'string' },
  connections: { type: 'string' },
  generators: { type: 'string' },
  only: { type: 'string' },
  'open-fraction': { type: 'string' },
  'open-rate': { type: 'string' },
  'serve-arg': { type: 'string', multiple: true },
  'pg-url': { type: 'string' },
  json: { type: 'boolean', default: false },
  keep: { type: 'boolean', default: false },
  report: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
};

const HELP = `usage: npm run bench -- [options]

Runs, one after another in one process tree, a bare grpc-js mTLS echo server, node oidc-provider
(client_credentials + tls_client_auth, certificate-bound ES256 JWTs, introspection) and a real
\`task-broker serve\` on PostgreSQL and on PGlite, each loaded by separate load-generator
processes; prints req/s, p50/p99, server CPU per call (PostgreSQL backends apart), peak RSS and
the ratios between them. See bench/README.md.

options:
  --seconds N           measured seconds per scenario (default 8)
  --warmup N            warm-up seconds before each measurement, at the same load (default 5)
  --inflight N          calls in flight in all (closed loop), spread over the generators (default 64)
  --connections N       mTLS connections (one workload identity each) in all (default 4); HTTPS
                        has one request per connection at a time, so oidc-provider gets
                        --inflight keep-alive connections spread over these identities
  --generators N        load-generator processes (default 2)
  --only LIST           comma-separated scenarios or groups (default all):
                        ${SCENARIOS.map((s) => s.id).join(', ')};
                        groups: ${Object.keys(GROUPS).join(', ')}
  --open-fraction F     open-loop rate as a fraction of the measured closed-loop IssueToken rate
                        of the same store (default 0.5)
  --open-rate N         open-loop rate in calls/s instead (same for both stores)
  --serve-arg ARG       extra argument for \`task-broker serve\` (repeatable), e.g.
                        --serve-arg=--max-active-calls=8 or --serve-arg=--log-level=warn
  --pg-url URL          PostgreSQL server for the bench database (default
                        TASK_BROKER_BENCH_PG_URL or postgres://postgres@127.0.0.1:5432/postgres);
                        a unique database is created on it and dropped at the end
  --json                results as JSON on stdout (progress stays on stderr)
  --report FILE         print the text report of an earlier run's --json output, and run nothing
  --keep                keep the work directory (PKI, the broker's logs) and say where it is
  -h, --help            this help`;

export interface Options {
  seconds: number;
  warmup: number;
  inflight: number;
  connections: number;
  generators: number;
  scenarios: Scenario[];
  openFraction: number;
  openRate?: number;
  serveArgs: string[];
  pgUrl: string;
  json: boolean;
  keep: boolean;
}

function number(name: string, text: string, { min = 1, integer = true, max = Infinity } = {}): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name}: expected ${integer ? 'a whole number' : 'a number'} from ${min}${max < Infinity ? ` to ${max}` : ''}, got "${text}"`);
  }
  return n;
}

export function parseOptions(argv: string[]): Options | undefined {
  let parsed: Record<string, string | boolean | Array<string | boolean> | undefined>;
  try {
    parsed = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  const text = (name: string): string | undefined => {
    const v = parsed[name];
    return typeof v === 'string' ? v : undefined;
  };
  const values = {
    help: parsed.help === true,
    json: parsed.json === true,
    keep: parsed.keep === true,
    only: text('only'),
    seconds: text('seconds') ?? '8',
    warmup: text('warmup') ?? '5',
    inflight: text('inflight') ?? '64',
    connections: text('connections') ?? '4',
    generators: text('generators') ?? '2',
    'open-fraction': text('open-fraction') ?? '0.5',
    'open-rate': text('open-rate'),
    'pg-url': text('pg-url'),
    'serve-arg': (Array.isArray(parsed['serve-arg']) ? parsed['serve-arg'] : []).filter((a): a is string => typeof a === 'string'),
  };
  if (values.help) {
    console.log(HELP);
    return undefined;
  }
  const report = text('report');
  if (report !== undefined) {
    // `npm run bench -- --json > FILE` puts npm's own banner before the JSON (`npm run -s` does not).
    const saved = readFileSync(report, 'utf8');
    printReport(JSON.parse(saved.slice(Math.max(0, saved.indexOf('\n{') + 1))) as Report);
    return undefined;
  }
  let scenarios = SCENARIOS;
  if (values.only !== undefined) {
    const wanted = values.only
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const picked = new Set<Scenario>();
    for (const name of wanted) {
      const group = GROUPS[name];
      const matches = group ? SCENARIOS.filter(group) : SCENARIOS.filter((s) => s.id === name);
      if (matches.length === 0) throw new UsageError(`--only: unknown scenario or group "${name}"`);
      for (const s of matches) picked.add(s);
    }
    scenarios = SCENARIOS.filter((s) => picked.has(s));
  }
  const generators = number('generators', values.generators, { max: 64 });
  const connections = number('connections', values.connections, { max: 256 });
  const inflight = number('inflight', values.inflight, { max: 100_000 });
  if (connections < generators) throw new UsageError('--connections must be at least --generators (each generator has its own connections)');
  if (inflight < connections) throw new UsageError('--inflight must be at least --connections');
  return {
    seconds: number('seconds', values.seconds, { min: 0.5, integer: false }),
    warmup: number('warmup', values.warmup, { min: 0, integer: false }),
    inflight,
    connections,
    generators,
    scenarios,
    openFraction: number('open-fraction', values['open-fraction'], { min: 0.01, max: 10, integer: false }),
    ...(values['open-rate'] !== undefined ? { openRate: number('open-rate', values['open-rate'], { min: 1, integer: false }) } : {}),
    serveArgs: values['serve-arg'],
    pgUrl: values['pg-url'] ?? process.env.TASK_BROKER_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    json: values.json,
    keep: values.keep,
  };
}
