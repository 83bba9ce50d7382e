// `npm run example`: the two example services against a local broker, end to end, on this
// machine alone. A throwaway trust domain from the broker's own dev CA (`task-broker dev-ca`),
// `task-broker serve` on embedded PGlite, the resource server (examples/resource-server.mjs,
// Express + the verifier SDK) and the workload (examples/workload.mjs, the workload SDK).
// Exits 0 when the workload's call succeeded with the token and was refused once the task ended.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { json, startLocalBroker } from './local-broker.mjs';

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

const broker = await startLocalBroker({
  trustDomain: TD,
  brokerId: BROKER_ID,
  identities: [
    [WORKER, 'worker'],
    [API, 'api'],
  ],
  policy: POLICY,
  prefix: 'task-broker-example-',
});
try {
  const brokerEnv = { BROKER_ADDRESS: broker.address, BROKER_ID };
  const apiPort = await broker.start(
    'resource-server',
    [HERE('./resource-server.mjs')],
    { ...brokerEnv, ...broker.files('api'), PORT: '0' },
    (line) => json(line)?.listening,
  );
  console.log(`resource server listening on https://127.0.0.1:${apiPort} as ${API}`);

  const workload = spawn(process.execPath, [HERE('./workload.mjs')], {
    env: { ...process.env, ...brokerEnv, ...broker.files('worker'), RESOURCE_URL: `https://127.0.0.1:${apiPort}`, AUDIENCE: API },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const code = await new Promise((resolve) => workload.once('exit', resolve));
  console.log(code === 0 ? 'example: OK (token accepted while the task was live, refused as revoked once it completed)' : `example: FAILED (${code})`);
  process.exitCode = code ?? 1;
} finally {
  await broker.close();
}
