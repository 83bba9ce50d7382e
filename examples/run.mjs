// `npm run example`: the two example services against a local broker, end to end, on this
// machine alone. A throwaway trust domain from the broker's own dev CA (`task-broker dev-ca`),
// `task-broker serve` on embedded PGlite, the resource server (examples/resource-server.mjs,
// Express + the verifier SDK) and the workload (examples/workload.mjs, the workload SDK).
// Exits 0 when the workload's call succeeded with the token and was refused once the task ended.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const BIN = fileURLToPath(new URL('../bin/task-broker.js', import.meta.url));
const HERE = (file) => fileURLToPath(new URL(file, import.meta.url));
const TD = 'example.org';
const BROKER_ID = `spiffe://${TD}/task-broker`;
const WORKER = `spiffe://${TD}/ns/demo/sa/worker`;
const API = `spiffe://${TD}/ns/billing/sa/invoice-api`;
const POLICY = `version: 1
rules:
  - name: demo-exports
    callers:
      spiffe_ids: ["spiffe://${TD}/ns/demo/**"]
    actions: ["invoice.export"]
    audiences: ["${API}"]
    scopes: ["invoices:read"]
`;

const dir = await mkdtemp(join(tmpdir(), 'task-broker-example-'));
const children = [];
const cli = (...args) => promisify(execFile)(process.execPath, [BIN, ...args]);

/** Starts `argv`, echoes its output with a prefix, resolves with the first output line `accept` returns a value for. */
function start(name, argv, env, accept) {
  const child = spawn(process.execPath, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => {
        const value = accept(line);
        if (value !== undefined) resolve(value);
        if (process.env.EXAMPLE_VERBOSE || !line.startsWith('{')) console.log(`[${name}] ${line}`);
      });
    }
    child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready`)));
  });
}

const json = (line) => {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
};

try {
  await cli('dev-ca', 'init', '--dir', dir, '--trust-domain', TD);
  for (const [id, name] of [
    [BROKER_ID, 'broker'],
    [WORKER, 'worker'],
    [API, 'api'],
  ])
    await cli('dev-ca', 'mint', '--dir', dir, '--spiffe-id', id, '--name', name);
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  const files = (name) => ({ SVID_CERT: join(dir, `${name}.pem`), SVID_KEY: join(dir, `${name}.key`), BUNDLE: join(dir, 'ca.pem') });

  const brokerPort = await start(
    'broker',
    [
      BIN,
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--http-listen',
      'off',
      '--svid-cert',
      join(dir, 'broker.pem'),
      '--svid-key',
      join(dir, 'broker.key'),
      '--bundle',
      `${TD}=${join(dir, 'ca.pem')}`,
      '--policy',
      join(dir, 'policy.yaml'),
      '--data-dir',
      join(dir, 'data'),
      '--migrate',
    ],
    { TASK_BROKER_KEK: randomBytes(32).toString('base64') },
    (line) => (json(line)?.msg === 'task-broker listening' ? json(line).port : undefined),
  );
  const broker = { BROKER_ADDRESS: `127.0.0.1:${brokerPort}`, BROKER_ID };
  console.log(`broker listening on 127.0.0.1:${brokerPort} (PGlite in ${join(dir, 'data')})`);

  const apiPort = await start('resource-server', [HERE('./resource-server.mjs')], { ...broker, ...files('api'), PORT: '0' }, (line) => json(line)?.listening);
  console.log(`resource server listening on https://127.0.0.1:${apiPort} as ${API}`);

  const workload = spawn(process.execPath, [HERE('./workload.mjs')], {
    env: { ...process.env, ...broker, ...files('worker'), RESOURCE_URL: `https://127.0.0.1:${apiPort}`, AUDIENCE: API },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const code = await new Promise((resolve) => workload.once('exit', resolve));
  console.log(code === 0 ? 'example: OK (token accepted while the task was live, refused as revoked once it completed)' : `example: FAILED (${code})`);
  process.exitCode = code ?? 1;
} finally {
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
  await rm(dir, { recursive: true, force: true });
}
