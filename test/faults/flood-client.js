// A burst of concurrent CreateTask calls from one identity, run in a process of its own so the
// load it puts on the client side does not count against the callers being measured.
// Input: FLOOD_* environment variables; output: one JSON line with the count of each status
// and how many RESOURCE_EXHAUSTED answers carried a retry hint.
import * as grpc from '@grpc/grpc-js';
import { BrokerClient } from '../../dist/src/client/broker-client.js';
import { svidChannelCredentials } from '../../dist/src/client/credentials.js';

const env = process.env;
const client = new BrokerClient({
  address: env.FLOOD_ADDRESS,
  credentials: svidChannelCredentials({ certChainPem: env.FLOOD_CERT, keyPem: env.FLOOD_KEY, bundle: env.FLOOD_BUNDLE, serverId: env.FLOOD_SERVER_ID }),
});
const spec = { action: 'invoice.export', resources: ['invoices/2026-11'], audience: env.FLOOD_AUDIENCE, scopes: ['invoices:read'], ttl: { seconds: 600 } };
await client.whoAmI();
process.stdout.write('ready\n');
await new Promise((resolve) => process.stdin.once('data', resolve));
process.stdin.destroy();
const counts = {};
const started = performance.now();
let withPushback = 0;
await Promise.all(
  Array.from({ length: Number(env.FLOOD_CALLS) }, () =>
    client.createTask({ spec }, { deadlineMs: 120_000 }).then(
      () => (counts.OK = (counts.OK ?? 0) + 1),
      (err) => {
        const name = grpc.status[err.code] ?? String(err.code);
        counts[name] = (counts[name] ?? 0) + 1;
        if (err.code === grpc.status.RESOURCE_EXHAUSTED && Number(err.metadata?.get('grpc-retry-pushback-ms')[0]) > 0) withPushback += 1;
      },
    ),
  ),
);
process.stdout.write(
  `${JSON.stringify({ counts, withPushback, elapsedMs: Math.round(performance.now() - started), cpuMs: Math.round(process.cpuUsage().user / 1000 + process.cpuUsage().system / 1000) })}\n`,
);
client.close();
