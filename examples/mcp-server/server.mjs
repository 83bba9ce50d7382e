// An MCP server whose tasks are guarded by the task broker: Streamable HTTP over HTTPS with mTLS
// (a client certificate is asked for; its X509-SVID names the requester), one long-running tool,
// `report.generate`, that works for a few seconds, gets a task token for a downstream call and
// returns a report. Every task request is checked and audited by the broker (task-broker/mcp).
//
// Environment: BROKER_ADDRESS, BROKER_ID, SVID_CERT, SVID_KEY, BUNDLE (PEM), MCP_SERVER_ID, PORT.
import { constants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { decodeJwt } from 'jose';
import { z } from 'zod';
import { connectTaskBroker } from '../../dist/src/client/index.js';
import { guardMcpTasks, requesterAuthInfo } from '../../dist/src/mcp/index.js';

const env = (name) =>
  process.env[name] ??
  (() => {
    throw new Error(`${name} is not set`);
  })();

// The MCP server talks to the broker with its own SVID: it is the gateway of the tasks it serves.
const broker = await connectTaskBroker({
  address: env('BROKER_ADDRESS'),
  serverId: env('BROKER_ID'),
  files: { certFile: env('SVID_CERT'), keyFile: env('SVID_KEY'), bundleFile: env('BUNDLE') },
});

const guard = guardMcpTasks({
  broker,
  audience: env('MCP_SERVER_ID'),
  scopes: ['reports:write'],
  defaultTtlMs: 120_000,
  pollIntervalMs: 500,
  onError: (err, taskId) => console.error(`task ${taskId}: ${err.message}`),
});

/** The tool's work: a few seconds of "rendering", stopped early when the task is cancelled or expires. */
async function generateReport({ quarter }, work) {
  for (let step = 1; step <= 4; step++) {
    await sleep(500, undefined, { signal: work.signal });
    console.log(`task ${work.taskId}: rendering ${quarter}, step ${step}/4`);
  }
  // A token for a downstream call (e.g. a storage API): sub = the requester, act = this server.
  const { token, expiresAt } = await work.issueToken({ scopes: ['reports:write'], ttlSeconds: 60 });
  const claims = decodeJwt(token);
  console.log(`task ${work.taskId}: downstream token sub=${claims.sub} act=${JSON.stringify(claims.act)} until ${expiresAt.toISOString()}`);
  return { content: [{ type: 'text', text: `Report ${quarter}: 42 invoices, 3 overdue (stored for ${claims.sub})` }] };
}

/** Stateless Streamable HTTP: a fresh McpServer per request; the guard (and the works) outlive them. */
function mcpServer() {
  const server = new McpServer({ name: 'reports', version: '1.0.0' }, guard.serverOptions());
  // Also installs the guard's broker-checked tasks/get, tasks/result, tasks/list and tasks/cancel.
  guard.registerToolTask(
    server,
    'report.generate',
    { description: 'Generates a quarterly report (task-only)', inputSchema: { quarter: z.string() } },
    generateReport,
  );
  return server;
}

const https = createServer(
  {
    cert: readFileSync(env('SVID_CERT')),
    key: readFileSync(env('SVID_KEY')),
    ca: readFileSync(env('BUNDLE')),
    requestCert: true,
    rejectUnauthorized: true,
    // No TLS session resumption: a resumed session presents only the client's leaf certificate,
    // and a requester SVID issued by an intermediate would then fail at the broker.
    secureOptions: constants.SSL_OP_NO_TICKET,
  },
  (req, res) => {
    req.auth = requesterAuthInfo(req);
    const server = mcpServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    server
      .connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch((err) => {
        console.error(err);
        if (!res.headersSent) res.writeHead(500).end();
      });
  },
);

https.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => console.log(JSON.stringify({ listening: https.address().port })));

const stop = async () => {
  https.close();
  await guard.close();
  broker.close();
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
