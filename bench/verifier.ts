/**
 * `npm run bench:verifier`: the verifier SDK's offline verification rate beside raw node:crypto,
 * in one process on one core, one run. The SDK verifies a valid ES256 task token with the
 * presenter's certificate, a revocation set fed by a (fake, in-process) stream, and access
 * reports on; raw is crypto.verify (sha256, ieee-p1363) of the same token's signing input with
 * the same key; jose is the peer, what a resource server does without the SDK: jose's jwtVerify
 * (typ, iss, aud, exp/nbf, signature) and the cnf comparison, blind to revocation. Each line gives
 * the rate, its share of raw, its ratio to jose and the CPU (user + system) per call. Rounds
 * alternate (raw, verify, verifySync, jose) so drift of the machine hits all alike; each round runs in slices that yield to the event loop, so report flushes run as they
 * would in a server.
 *
 *   npm run bench:verifier [-- --seconds 2 --rounds 5]
 */
import { EventEmitter } from 'node:events';
import { createHash, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import type { TokenUse } from '../src/gen/taskbroker/v1/TokenUse.js';
import type { SigningKey } from '../src/tokens/keyring.js';
import { importJWK, jwtVerify } from 'jose';
import { signTaskToken } from '../src/tokens/task-token.js';
import { createTaskTokenVerifier, type VerifierBroker } from '../src/verifier/index.js';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '2' }, rounds: { type: 'string', default: '5' } } });
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
const SLICE = 512;
const ISSUER = 'spiffe://bench.test/task-broker';
const AUDIENCE = 'spiffe://bench.test/api';

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const kid = randomBytes(16).toString('base64url');
const key: SigningKey = { kid, alg: 'ES256', privateKey, publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } };
const presenter = randomBytes(600); // stands for the DER the TLS socket gives (one Buffer per connection)
const thumbprint = createHash('sha256').update(presenter).digest('base64url');
const now = Math.floor(Date.now() / 1000);
const token = await signTaskToken(key, {
  iss: ISSUER,
  sub: 'spiffe://bench.test/worker',
  aud: AUDIENCE,
  iat: now,
  nbf: now,
  exp: now + 3600,
  jti: randomBytes(16).toString('base64url'),
  task_id: `tsk_${randomBytes(18).toString('base64url')}`,
  task_hash: randomBytes(32).toString('base64url'),
  scope: 'invoices:read',
  cnf: { 'x5t#S256': thumbprint },
});

let reported = 0;
const stream = Object.assign(new EventEmitter(), { cancel: () => undefined });
const broker: VerifierBroker = {
  getSigningKeys: () => Promise.resolve({ jwksJson: JSON.stringify({ keys: [key.publicJwk] }), issuer: ISSUER, alg: 'ES256' }),
  watchRevocations: () => stream,
  reportTokenUse: (uses: TokenUse[]) => {
    reported += uses.length;
    return Promise.resolve({ recorded: uses.length, duplicates: 0, rejected: 0 });
  },
  verifyToken: () => Promise.reject(new Error('not used')),
  whoAmI: () => Promise.resolve({ spiffeId: AUDIENCE, trustDomain: 'bench.test', certThumbprint: '', validUntil: null }),
};
const verifier = createTaskTokenVerifier({ broker, revocations: 'stream', maxStalenessMs: 3_600_000, reporting: {} });
const revoked = Array.from({ length: 1000 }, (_, i) => ({
  taskId: `tsk_revoked_${i}`,
  taskState: 'TASK_STATE_CANCELLED' as const,
  reason: 'bench',
  revokedAt: null,
  revokedTokens: 1,
  tokensExpireBy: { seconds: String(now + 3600), nanos: 0 },
}));
queueMicrotask(() => stream.emit('data', { snapshot: true, revocations: revoked, cursor: 'c1', asOf: null, heartbeatInterval: { seconds: '5', nanos: 0 } }));
await verifier.ready();

const options = { presenterCertificate: presenter, operation: 'invoices:read' };
const check = await verifier.verify(token, options);
if (!check.valid) throw new Error(`bench token not valid: ${check.reason} ${check.detail}`);

const [encodedHeader, encodedPayload, encodedSignature] = token.split('.') as [string, string, string];
const signingInput = Buffer.from(`${encodedHeader}.${encodedPayload}`, 'latin1');
const signature = Buffer.from(encodedSignature, 'base64url');
const rawKey = publicKey;

type Op = () => unknown;
const ops: Record<string, Op> = {
  raw: () => {
    if (!verify('sha256', signingInput, { key: rawKey, dsaEncoding: 'ieee-p1363' }, signature)) throw new Error('raw verify failed');
  },
  verifySync: () => {
    if (!verifier.verifySync(token, options).valid) throw new Error('verifySync refused');
  },
};

// The peer: what a resource server does without the SDK, with the JOSE library a Node team picks
// (jose's jwtVerify: signature, typ, iss, aud, exp/nbf), plus the cnf comparison it must add.
const joseKey = await importJWK(key.publicJwk, 'ES256');
const joseOptions = { issuer: ISSUER, audience: AUDIENCE, typ: 'task+jwt', algorithms: ['ES256'] };
type AsyncOp = () => Promise<void>;
const asyncOps: Record<string, AsyncOp> = {
  verify: async () => {
    if (!(await verifier.verify(token, options)).valid) throw new Error('verify refused');
  },
  jose: async () => {
    const { payload } = await jwtVerify(token, joseKey, joseOptions);
    if ((payload.cnf as { 'x5t#S256'?: string } | undefined)?.['x5t#S256'] !== thumbprint) throw new Error('jose: cnf mismatch');
  },
};

/** Operations per second and CPU (user + system) per operation over `seconds`, in slices of SLICE between which the event loop runs. */
async function rate(op: Op | AsyncOp, awaited: boolean): Promise<{ perSecond: number; cpuUs: number }> {
  const end = performance.now() + SECONDS * 1000;
  let count = 0;
  const started = performance.now();
  const cpu = process.cpuUsage();
  while (performance.now() < end) {
    if (awaited) for (let i = 0; i < SLICE; i++) await op();
    else for (let i = 0; i < SLICE; i++) void op();
    count += SLICE;
    await yieldToLoop();
  }
  const used = process.cpuUsage(cpu);
  return { perSecond: count / ((performance.now() - started) / 1000), cpuUs: (used.user + used.system) / count };
}

const NAMES = ['raw', 'verify', 'verifySync', 'jose'] as const;
const results = Object.fromEntries(NAMES.map((n) => [n, [] as Array<{ perSecond: number; cpuUs: number }>])) as Record<
  (typeof NAMES)[number],
  Array<{ perSecond: number; cpuUs: number }>
>;
const run = (name: (typeof NAMES)[number]) => (name in asyncOps ? rate(asyncOps[name]!, true) : rate(ops[name]!, false));
for (const name of NAMES) await run(name); // warm-up
for (let round = 0; round < ROUNDS; round++) for (const name of NAMES) results[name].push(await run(name));
await verifier.close();

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const raw = median(results.raw.map((r) => r.perSecond));
const jose = median(results.jose.map((r) => r.perSecond));
console.log(`node ${process.version}, ${SECONDS} s x ${ROUNDS} rounds each, one process (single-threaded), medians:`);
console.log('  name              rate   of raw   × jose   CPU per call');
for (const name of NAMES) {
  const m = median(results[name].map((r) => r.perSecond));
  const cpu = median(results[name].map((r) => r.cpuUs));
  console.log(
    `  ${name.padEnd(11)} ${Math.round(m).toLocaleString('en-US').padStart(9)} /s ${((m / raw) * 100).toFixed(1).padStart(6)} % ${(m / jose).toFixed(2).padStart(6)} ${cpu.toFixed(1).padStart(9)} µs`,
  );
}
const stats = verifier.stats();
console.log(
  `  reports: ${stats.reports.sent} sent (${reported} received by the fake broker), ${stats.reports.dropped} dropped, ${stats.reports.buffered} left`,
);
