// `node examples/mcp-server/run.mjs` (after `npm run build`): an MCP server whose tasks are guarded
// by the broker, end to end on this machine alone. A throwaway trust domain from the broker's dev
// CA, `task-broker serve` on embedded PGlite with a policy that lets the MCP server be the gateway
// of `report.generate` tasks, the MCP server (server.mjs), the two MCP clients (client.mjs), and
// then the task's audit trail as an admin reads it. Ends with `mcp example: OK` and exit 0.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const BIN = fileURLToPath(new URL('../../bin/task-broker.js', import.meta.url));
const HERE = (file) => fileURLToPath(new URL(file, import.meta.url));
const TD = 'example.org';
const BROKER_ID = `spiffe://${TD}/task-broker`;
const MCP_SERVER = `spiffe://${TD}/ns/mcp/sa/mcp-server`;
const AGENT = `spiffe://${TD}/ns/agents/sa/analyst`;
const OTHER = `spiffe://${TD}/ns/agents/sa/intruder`;
const ADMIN = `spiffe://${TD}/ns/platform/sa/admin`;
const POLICY = `version: 1
admins: ["${ADMIN}"]
rules:
  - name: mcp-reports
    callers:
      spiffe_ids: ["spiffe://${TD}/ns/agents/**"]   # the requester, who owns the task
    actions: ["report.generate"]
    audiences: ["${MCP_SERVER}"]
    scopes: ["reports:write"]
    gateways: ["${MCP_SERVER}"]                      # who may create and serve it for them
    result_retention: 1h
`;

const dir = await mkdtemp(join(tmpdir(), 'task-broker-mcp-example-'));
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
    [MCP_SERVER, 'mcp-server'],
    [AGENT, 'agent'],
    [OTHER, 'other'],
    [ADMIN, 'admin'],
  ])
    await cli('dev-ca', 'mint', '--dir', dir, '--spiffe-id', id, '--name', name);
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  const pem = (name) => join(dir, `${name}.pem`);
  const key = (name) => join(dir, `${name}.key`);
  const bundle = join(dir, 'ca.pem');

  const brokerPort = await start(
    'broker',
    [BIN, 'serve', '--listen', '127.0.0.1:0', '--http-listen', 'off', '--svid-cert', pem('broker'), '--svid-key', key('broker')].concat([
      '--bundle',
      `${TD}=${bundle}`,
      '--policy',
      join(dir, 'policy.yaml'),
      '--data-dir',
      join(dir, 'data'),
      '--migrate',
    ]),
    { TASK_BROKER_KEK: randomBytes(32).toString('base64') },
    (line) => (json(line)?.msg === 'task-broker listening' ? json(line).port : undefined),
  );
  const brokerAddress = `127.0.0.1:${brokerPort}`;
  console.log(`broker listening on ${brokerAddress} (PGlite in ${join(dir, 'data')})`);

  const mcpPort = await start(
    'mcp-server',
    [HERE('./server.mjs')],
    {
      BROKER_ADDRESS: brokerAddress,
      BROKER_ID,
      SVID_CERT: pem('mcp-server'),
      SVID_KEY: key('mcp-server'),
      BUNDLE: bundle,
      MCP_SERVER_ID: MCP_SERVER,
      PORT: '0',
    },
    (line) => json(line)?.listening,
  );
  const mcpUrl = `https://127.0.0.1:${mcpPort}/mcp`;
  console.log(`MCP server listening on ${mcpUrl} as ${MCP_SERVER}`);

  const client = spawn(process.execPath, [HERE('./client.mjs')], {
    env: {
      ...process.env,
      MCP_URL: mcpUrl,
      MCP_SERVER_ID: MCP_SERVER,
      BUNDLE: bundle,
      SVID_CERT: pem('agent'),
      SVID_KEY: key('agent'),
      OTHER_SVID_CERT: pem('other'),
      OTHER_SVID_KEY: key('other'),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let taskId;
  createInterface({ input: client.stdout }).on('line', (line) => {
    console.log(`[client] ${line}`);
    taskId = /^TASK_ID=(\S+)$/.exec(line)?.[1] ?? taskId;
  });
  const code = await new Promise((resolve) => client.once('exit', resolve));
  if (code !== 0 || !taskId) throw new Error(`the MCP client failed (exit ${code})`);

  console.log(`\naudit trail of ${taskId}, as the admin reads it:`);
  const trail = await cli(
    ...['admin', 'audit-trail', '--task', taskId, '--broker', brokerAddress, '--broker-id', BROKER_ID],
    ...['--svid-cert', pem('admin'), '--svid-key', key('admin'), '--bundle', bundle],
  );
  process.stdout.write(trail.stdout);
  for (const event of ['task.created', 'task.polled', 'task.result_read', 'task.completed']) {
    if (!trail.stdout.includes(event)) throw new Error(`the audit trail has no ${event}`);
  }
  console.log('mcp example: OK');
} catch (err) {
  console.error(`mcp example: FAILED: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
  await rm(dir, { recursive: true, force: true });
}
