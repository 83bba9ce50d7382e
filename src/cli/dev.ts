/**
 * `task-broker dev`: the broker's main job on a fresh machine, end to end, in one command.
 * Mints local trust domains, starts the broker on embedded PGlite, and walks through a task's
 * life: create (on behalf of a person, whose subject token comes from a local identity provider),
 * token, verification by the resource server, a delegation hop to a tool with a narrower grant,
 * completion (which ends the delegated task too), revocation, the stranger who knows the task
 * ID, and the audit trail of the whole tree with its hash chains checked.
 */
import * as grpc from '@grpc/grpc-js';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brokerConfig } from '../app/config.js';
import { startFromConfig } from '../app/start.js';
import { AdminClient } from '../client/admin-client.js';
import { BrokerClient, unaryCall } from '../client/broker-client.js';
import type { DelegateTaskResponse__Output } from '../gen/taskbroker/v1/DelegateTaskResponse.js';
import { structToJson } from '../protocol/struct.js';
import { initDevCa, loadDevCa, mintDevSvid, type SvidFiles } from '../devca/dev-ca.js';
import { chainPem, mintX509Svid, privateKeyPem } from '../devca/certificates.js';
import { createLogger } from '../observability/logger.js';
import { generateKekBase64 } from '../tokens/kek.js';
import { parseListenAddress, stringOption, textOption, type CommandSpec, type ParsedCommand } from './options.js';

export const devSpec: CommandSpec = {
  name: 'dev',
  summary: 'Mint a local trust domain, start the broker on the embedded database and run a demo end to end.',
  options: {
    dir: { type: 'string', placeholder: 'DIR', description: 'Where to keep the CA, SVIDs, key-encryption key and data (default: a new temporary directory)' },
    listen: { type: 'string', placeholder: 'HOST:PORT', default: '127.0.0.1:0', description: 'Broker gRPC listen address' },
    'http-listen': { type: 'string', placeholder: 'HOST:PORT', default: '127.0.0.1:0', description: 'Broker HTTP (JWKS) listen address' },
    'keep-running': { type: 'boolean', description: 'Leave the broker running after the demo (Ctrl-C stops it)' },
    'log-level': { type: 'string', placeholder: 'LEVEL', default: 'warn', description: "Broker log level (the broker's log lines go to stderr)" },
  },
};

const TRUST_DOMAIN = 'example.org';
const FEDERATED = 'partner.test';

interface Svid {
  certChainPem: string;
  keyPem: string;
}

async function readSvid(files: SvidFiles): Promise<Svid> {
  return { certChainPem: await readFile(files.certPath, 'utf8'), keyPem: await readFile(files.keyPath, 'utf8') };
}

function describe(err: unknown): string {
  const e = err as grpc.ServiceError;
  return `${grpc.status[e.code] ?? e.code}: ${e.details}`;
}

const IDP_ISSUER = 'https://idp.example.org';
const IDP_AUDIENCE = 'task-broker';

/**
 * Default deny: the demo's workloads may export invoices from the invoice API, for a person the
 * local identity provider vouches for, and hand the read part on to the demo's tools; one admin.
 */
function devPolicy(adminId: string, apiId: string, idpJwksPath: string): string {
  return `# task-broker dev policy (see examples/policy.yaml for the format)
version: 1
admins:
  - ${adminId}
subject_issuers:
  - issuer: ${IDP_ISSUER}
    jwks_file: ${idpJwksPath}
    audiences: ["${IDP_AUDIENCE}"]
    algorithms: ["ES256"]
    max_age: 1h
rules:
  - name: demo-invoice-export
    callers:
      spiffe_ids: ["spiffe://${TRUST_DOMAIN}/ns/demo/sa/*"]
    actions: ["invoice.export"]
    audiences: ["${apiId}"]
    scopes: ["invoices:read", "invoices:list"]
    max_task_ttl: 1h
    max_token_ttl: 5m
    delegation:
      to: ["spiffe://${TRUST_DOMAIN}/ns/tools/sa/*"]
      max_depth: 1
      scopes: ["invoices:read"]
`;
}

/** A local identity provider: an ES256 key, its JWKS file, and a signer of subject tokens. */
async function devIdp(dir: string): Promise<{ jwksPath: string; subjectToken(sub: string, sid: string): Promise<string> }> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = 'dev-idp-1';
  await mkdir(dir, { recursive: true });
  const jwksPath = join(dir, 'jwks.json');
  await writeFile(jwksPath, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] }, null, 2));
  return {
    jwksPath,
    subjectToken: (sub, sid) =>
      new SignJWT({ sid, groups: ['finance'] })
        .setProtectedHeader({ alg: 'ES256', kid, typ: 'JWT' })
        .setIssuer(IDP_ISSUER)
        .setAudience(IDP_AUDIENCE)
        .setSubject(sub)
        .setIssuedAt()
        .setExpirationTime('10m')
        .sign(privateKey),
  };
}

function decodeJwtPart(token: string, index: number): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[index] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

export async function runDev(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const dir = stringOption(parsed.values, 'dir') ?? (await mkdtemp(join(tmpdir(), 'task-broker-dev-')));
  const step = (text: string) => out(`\n==> ${text}`);
  const say = (text: string) => out(`    ${text}`);

  step(`Minting local trust domains in ${dir} (task-broker dev-ca)`);
  const home = await initDevCa(join(dir, 'ca', TRUST_DOMAIN), TRUST_DOMAIN, { force: true });
  const partner = await initDevCa(join(dir, 'ca', FEDERATED), FEDERATED, { force: true });
  const svidDir = join(dir, 'svids');
  const brokerId = `spiffe://${TRUST_DOMAIN}/task-broker`;
  const brokerFiles = await mintDevSvid(home.dir, brokerId, { outDir: svidDir });
  const workerId = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/worker`;
  const worker = await readSvid(await mintDevSvid(home.dir, workerId, { outDir: svidDir }));
  const apiId = `spiffe://${TRUST_DOMAIN}/ns/billing/sa/invoice-api`;
  const api = await readSvid(await mintDevSvid(home.dir, apiId, { outDir: svidDir }));
  const strangerId = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/stranger`;
  const stranger = await readSvid(await mintDevSvid(home.dir, strangerId, { outDir: svidDir }));
  const partnerId = `spiffe://${FEDERATED}/ns/jobs/sa/reporter`;
  const partnerWorkload = await readSvid(await mintDevSvid(partner.dir, partnerId, { outDir: svidDir }));
  const adminId = `spiffe://${TRUST_DOMAIN}/ns/platform/sa/admin`;
  const adminSvid = await readSvid(await mintDevSvid(home.dir, adminId, { outDir: svidDir }));
  const toolId = `spiffe://${TRUST_DOMAIN}/ns/tools/sa/pdf-renderer`;
  const tool = await readSvid(await mintDevSvid(home.dir, toolId, { outDir: svidDir }));
  const idp = await devIdp(join(dir, 'idp'));
  const policyPath = join(dir, 'policy.yaml');
  await writeFile(policyPath, devPolicy(adminId, apiId, idp.jwksPath));
  const kekPath = join(dir, 'kek');
  await writeFile(kekPath, `${generateKekBase64()}\n`, { mode: 0o600, flag: 'w' });
  say(`${TRUST_DOMAIN} CA: ${home.certPath}`);
  say(`${FEDERATED} CA (federated): ${partner.certPath}`);
  say(`SVIDs: broker ${brokerId}, workload ${workerId}, tool ${toolId}, resource server ${apiId}, ${strangerId}, ${partnerId}`);
  say(`identity provider ${IDP_ISSUER} (subject tokens for the person behind a task): JWKS ${idp.jwksPath}`);
  say(`key-encryption key for the signing keys: ${kekPath}`);
  say(`policy (default deny; one rule for the demo workloads, one admin): ${policyPath}`);

  step('Starting the broker: mTLS with both trust bundles, embedded PGlite, JWKS over HTTP');
  const logLevel = textOption(parsed.values, 'log-level') as 'warn';
  const logger = createLogger({ level: logLevel, destination: process.stderr });
  const config = brokerConfig({
    listen: parseListenAddress(textOption(parsed.values, 'listen')),
    http: parseListenAddress(textOption(parsed.values, 'http-listen')),
    identity: {
      kind: 'files',
      svidCertPath: brokerFiles.certPath,
      svidKeyPath: brokerFiles.keyPath,
      bundles: [
        { trustDomain: TRUST_DOMAIN, path: home.certPath },
        { trustDomain: FEDERATED, path: partner.certPath },
      ],
    },
    policyPath,
    database: { dataDir: join(dir, 'data') },
    migrate: true,
    kek: { file: kekPath },
    logLevel,
  });
  const broker = await startFromConfig(config, logger);
  const address = `127.0.0.1:${broker.port}`;
  say(`gRPC on ${address} as ${brokerId}; database: ${broker.store.description}`);
  say(`JWKS: http://127.0.0.1:${broker.httpPort ?? '?'}/.well-known/jwks.json`);
  const bundlePem = await readFile(home.certPath, 'utf8');
  const connect = (svid: Svid) => BrokerClient.withSvid(address, { ...svid, bundle: bundlePem, serverId: brokerId });
  const clients = { worker: connect(worker), api: connect(api), stranger: connect(stranger), tool: connect(tool) };
  const admin = AdminClient.withSvid(address, { ...adminSvid, bundle: bundlePem, serverId: brokerId });

  try {
    step(`${workerId} asks the broker who it is`);
    const me = await clients.worker.whoAmI();
    say(`verified: ${me.spiffeId}, certificate x5t#S256 ${me.certThumbprint}`);
    const them = await connect(partnerWorkload).whoAmI();
    say(`federated: ${them.spiffeId} verified against the ${them.trustDomain} bundle`);
    const { ca: partnerCa } = await loadDevCa(partner.dir);
    const impostor = await mintX509Svid(partnerCa, workerId);
    await connect({ certChainPem: chainPem(impostor), keyPem: await privateKeyPem(impostor.keys) })
      .whoAmI()
      .then(
        () => say('UNEXPECTED: an impostor got in'),
        (err: unknown) => say(`impostor (${workerId} signed by ${FEDERATED}'s CA) refused: ${describe(err)}`),
      );

    step('The workload creates a task for the invoice API, on behalf of alice (a subject token from the identity provider)');
    const subjectToken = await idp.subjectToken('alice', 'session-7f3a');
    const created = await clients.worker.createTask({
      subjectToken,
      spec: {
        action: 'invoice.export',
        resources: ['invoices/2026-11'],
        audience: apiId,
        scopes: ['invoices:read'],
        params: { fields: { format: { stringValue: 'csv', kind: 'stringValue' } } },
        ttl: { seconds: 600 },
      },
      idempotencyKey: 'export-2026-11',
    });
    const task = created.task!;
    say(`task ${task.taskId} ${task.state}, expires ${new Date(Number(task.expiresAt?.seconds) * 1000).toISOString()}`);
    say(`task_hash ${task.taskHash} = base64url(SHA-256(${created.canonicalSpec}))`);
    say(`principal: ${JSON.stringify(task.principal)} (in the hash, the task, every event and every token)`);

    step('The workload asks for a token for the task');
    const issued = await clients.worker.issueToken({ taskId: task.taskId });
    const header = decodeJwtPart(issued.token, 0);
    const claims = decodeJwtPart(issued.token, 1);
    say(`header ${JSON.stringify(header)}`);
    say(`claims ${JSON.stringify(claims)}`);

    step(`The resource server ${apiId} verifies the token the workload presented`);
    const verify = (presenter: string) => clients.api.verifyToken({ token: issued.token, presenterCertThumbprint: presenter, expectedTaskHash: task.taskHash });
    const ok = await verify(me.certThumbprint);
    say(`${ok.reason}: ${ok.detail}`);
    const stolen = await verify((await clients.stranger.whoAmI()).certThumbprint);
    say(`the same token presented by ${strangerId}: ${stolen.reason}: ${stolen.detail}`);

    step(`${strangerId} knows the task ID and polls it`);
    await clients.stranger.getTask(task.taskId).then(
      () => say('UNEXPECTED: a stranger read the task'),
      (err: unknown) => say(`${describe(err)} (the same answer as for a task that does not exist; the attempt is audited)`),
    );

    step(`The workload hands the read part on to ${toolId} (DelegateTask: a narrower child task)`);
    const delegated = await unaryCall<DelegateTaskResponse__Output>((md, opts, cb) =>
      clients.worker.raw.DelegateTask(
        { parentTaskId: task.taskId, delegatee: toolId, spec: { scopes: ['invoices:read'], ttl: { seconds: 300 } } },
        md,
        opts,
        cb,
      ),
    );
    const child = delegated.task!;
    say(`child task ${child.taskId} owned by ${child.ownerSpiffeId}, depth ${child.depth}, delegators ${JSON.stringify(child.delegators)}`);
    say(`child task_hash covers the parent's: ${delegated.canonicalSpec}`);
    const childToken = await clients.tool.issueToken({ taskId: child.taskId });
    say(`the tool's token claims ${JSON.stringify(decodeJwtPart(childToken.token, 1))}`);
    const toolCert = (await clients.tool.whoAmI()).certThumbprint;
    const childOk = await clients.api.verifyToken({ token: childToken.token, presenterCertThumbprint: toolCert });
    say(`${apiId} verifies the tool's token: ${childOk.reason} (acting for ${JSON.stringify(childOk.claims?.actors)})`);
    await unaryCall((md, opts, cb) =>
      clients.tool.raw.DelegateTask({ parentTaskId: child.taskId, delegatee: toolId, spec: { scopes: ['invoices:list'] } }, md, opts, cb),
    ).then(
      () => say('UNEXPECTED: the tool widened its grant'),
      (err: unknown) => say(`the tool tries to hand on invoices:list: ${describe(err)}`),
    );

    step('The workload completes the task (the delegated task ends with it)');
    const done = await clients.worker.completeTask(task.taskId, 'exported 42 invoices');
    say(`task ${done.task?.state}; tokens revoked with it: ${done.revokedTokens}`);

    step('The resource server verifies the same tokens again');
    const after = await verify(me.certThumbprint);
    say(`${after.reason}: ${after.detail}`);
    const childAfter = await clients.api.verifyToken({ token: childToken.token, presenterCertThumbprint: toolCert });
    say(`the tool's token: ${childAfter.reason}: ${childAfter.detail}`);

    step(`The platform team reads the task's audit trail (${adminId}, TaskBrokerAdmin.GetAuditTrail)`);
    for (const id of [task.taskId, child.taskId]) {
      const trail = await admin.getWholeAuditTrail(id);
      say(`task ${id}:`);
      for (const e of trail.events) {
        const at = new Date(Number(e.occurredAt?.seconds ?? 0) * 1000 + Math.floor((e.occurredAt?.nanos ?? 0) / 1e6)).toISOString();
        say(`#${e.seq} ${at} ${e.eventType.padEnd(20)} ${e.actorSpiffeId} ${JSON.stringify(structToJson(e.details))}`);
      }
      const chain = trail.chain;
      say(
        chain?.ok
          ? `hash chain verified: ${chain.events} events, head ${trail.events.at(-1)?.hash ?? ''}`
          : `HASH CHAIN BROKEN at event ${chain?.brokenAt}: ${chain?.problem}`,
      );
    }
  } finally {
    for (const c of Object.values(clients)) c.close();
    admin.close();
    if (parsed.values['keep-running'] === true) {
      out(`\nBroker left running on ${address}; SVIDs, bundles and the KEK are in ${dir}. Ctrl-C to stop.`);
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()).once('SIGTERM', () => resolve()));
    }
    await broker.close(2_000);
  }
  out('\nDemo complete.');
  return 0;
}
