// A workload with the workload SDK: it creates a task (a params object, nothing hand-built),
// gets a token for the resource server, calls it over mTLS with the same SVID the token is bound
// to, completes the task, and shows that the token died with it: the resource server, verifying
// offline, refuses the same token as REVOKED within milliseconds.
//
// Environment: BROKER_ADDRESS, BROKER_ID, SVID_CERT, SVID_KEY, BUNDLE, RESOURCE_URL, AUDIENCE.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { connectTaskBroker } from 'task-broker/client';

const env = (name) =>
  process.env[name] ??
  (() => {
    throw new Error(`${name} is not set`);
  })();

const broker = await connectTaskBroker({
  address: env('BROKER_ADDRESS'),
  serverId: env('BROKER_ID'),
  files: { certFile: env('SVID_CERT'), keyFile: env('SVID_KEY'), bundleFile: env('BUNDLE') },
});

/** The resource server is authenticated by its SPIFFE ID (its one URI SAN), not by a host name: the chain is checked against the bundle (ca). */
const checkServerIdentity = (_host, cert) =>
  cert.subjectaltname === `URI:${env('AUDIENCE')}` ? undefined : new Error(`the server is ${cert.subjectaltname}, not ${env('AUDIENCE')}`);

/** GET `url` over mTLS with the current SVID and the token; resolves with status and body. */
function call(url, token) {
  const svid = broker.source.current();
  return new Promise((resolve, reject) => {
    request(
      url,
      { cert: svid.certChainPem, key: svid.keyPem, ca: readFileSync(env('BUNDLE')), checkServerIdentity, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        let body = '';
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body || 'null') }));
      },
    )
      .on('error', reject)
      .end();
  });
}

try {
  const { task } = await broker.createTask({
    action: 'invoice.export',
    resources: ['invoices/2026-11'],
    audience: env('AUDIENCE'),
    scopes: ['invoices:read'],
    params: { month: '2026-11', format: 'csv' },
    ttlSeconds: 300,
  });
  console.log(`task ${task.taskId} is ${task.state}, hash ${task.taskHash}`);
  const { token, expiresAt } = await broker.issueToken(task.taskId, { ttlSeconds: 60 });
  console.log(`token until ${expiresAt.toISOString()}`);

  const url = `${env('RESOURCE_URL')}/invoices/2026-11`;
  const before = await call(url, token);
  console.log(`before completion: HTTP ${before.status} ${JSON.stringify(before.body)}`);

  const { revokedTokens } = await broker.completeTask(task.taskId, 'exported');
  console.log(`task completed, ${revokedTokens} token(s) revoked`);
  // The revocation is pushed to the resource server: a few milliseconds; allow it a second.
  let after;
  for (let i = 0; i < 20; i++) {
    after = await call(url, token);
    if (after.status !== 200) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  console.log(`after completion: HTTP ${after.status} ${JSON.stringify(after.body)}`);
  process.exitCode = before.status === 200 && after.status === 401 ? 0 : 1;
} finally {
  broker.close();
}
