// `node examples/mcp-server/run.mjs` (after `npm run build`): an MCP server whose tasks are guarded
// by the broker, end to end on this machine alone. A throwaway trust domain from the broker's dev
// CA, `task-broker serve` on embedded PGlite with a policy that lets the MCP server be the gateway
// of `report.generate` tasks, the MCP server (server.mjs), the two MCP clients (client.mjs), and
// then the task's audit trail as an admin reads it. Ends with `mcp example: OK` and exit 0.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { cli, json, startLocalBroker } from '../local-broker.mjs';

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

const broker = await startLocalBroker({
  trustDomain: TD,
  brokerId: BROKER_ID,
  identities: [
    [MCP_SERVER, 'mcp-server'],
    [AGENT, 'agent'],
    [OTHER, 'other'],
    [ADMIN, 'admin'],
  ],
  policy: POLICY,
  prefix: 'task-broker-mcp-example-',
});
try {
  const { bundle } = broker;
  const files = broker.files;

  const mcpPort = await broker.start(
    'mcp-server',
    [HERE('./server.mjs')],
    { BROKER_ADDRESS: broker.address, BROKER_ID, ...files('mcp-server'), MCP_SERVER_ID: MCP_SERVER, PORT: '0' },
    (line) => json(line)?.listening,
  );
  const mcpUrl = `https://127.0.0.1:${mcpPort}/mcp`;
  console.log(`MCP server listening on ${mcpUrl} as ${MCP_SERVER}`);

  const other = files('other');
  const client = spawn(process.execPath, [HERE('./client.mjs')], {
    env: {
      ...process.env,
      MCP_URL: mcpUrl,
      MCP_SERVER_ID: MCP_SERVER,
      ...files('agent'),
      OTHER_SVID_CERT: other.SVID_CERT,
      OTHER_SVID_KEY: other.SVID_KEY,
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
  const admin = files('admin');
  const trail = await cli(
    ...['admin', 'audit-trail', '--task', taskId, '--broker', broker.address, '--broker-id', BROKER_ID],
    ...['--svid-cert', admin.SVID_CERT, '--svid-key', admin.SVID_KEY, '--bundle', bundle],
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
  await broker.close();
}
