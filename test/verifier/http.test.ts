/**
 * The plug-ins over real mTLS: node:https and node:http2 servers that require a client
 * certificate, Express and Fastify on top; the presenter certificate is the TLS peer's.
 * Certificates are minted at test time.
 */
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import https from 'node:https';
import http2 from 'node:http2';
import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainPem, createRootCa, mintX509Svid, privateKeyPem, type IssuedCertificate } from '../../src/devca/certificates.js';
import { createTaskTokenVerifier, expressMiddleware, fastifyHook, verifyHttpRequest, type TaskTokenVerifier } from '../../src/verifier/index.js';
import { FakeBroker, token } from './fakes.js';

interface Pem {
  cert: string;
  key: string;
}

let ca: IssuedCertificate;
let server: Pem;
let client: Pem;
let stranger: Pem;
let clientThumbprint: string;
let broker: FakeBroker;
let verifier: TaskTokenVerifier;

async function pemOf(issued: IssuedCertificate): Promise<Pem> {
  return { cert: chainPem(issued), key: await privateKeyPem(issued.keys) };
}

beforeAll(async () => {
  ca = await createRootCa('a.test');
  const clientCert = await mintX509Svid(ca, 'spiffe://a.test/workload');
  server = await pemOf(await mintX509Svid(ca, 'spiffe://a.test/target'));
  client = await pemOf(clientCert);
  stranger = await pemOf(await mintX509Svid(ca, 'spiffe://a.test/stranger'));
  clientThumbprint = createHash('sha256').update(clientCert.der).digest('base64url');
  broker = new FakeBroker();
  verifier = createTaskTokenVerifier({ broker, revocations: 'none', reporting: false });
  await verifier.ready();
});

afterAll(async () => {
  await verifier.close();
});

const tlsServerOptions = () => ({ ...server, ca: ca.pem, requestCert: true, rejectUnauthorized: true });

/** GET / over mTLS as `identity`, with an optional bearer token; the status, the WWW-Authenticate header and the body. */
async function get(port: number, identity: Pem, bearer?: string): Promise<{ status: number; challenge: string | undefined; body: string }> {
  const req = https.request({
    host: '127.0.0.1',
    port,
    path: '/',
    ...identity,
    ca: ca.pem,
    checkServerIdentity: () => undefined,
    agent: false,
    headers: bearer ? { authorization: `Bearer ${bearer}` } : {},
  });
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  let body = '';
  for await (const chunk of res) body += String(chunk);
  return { status: res.statusCode ?? 0, challenge: res.headers['www-authenticate'], body };
}

async function listening(srv: https.Server | http2.Http2SecureServer): Promise<number> {
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return (srv.address() as AddressInfo).port;
}

describe('verifyHttpRequest on node:https', () => {
  it('takes the bearer token and the TLS peer certificate', async () => {
    const srv = https.createServer(tlsServerOptions(), (req, res) => {
      void verifyHttpRequest(verifier, req, { operation: 'read' }).then((result) => res.end(`${result.reason} ${result.claims?.task_id ?? '-'}`));
    });
    const port = await listening(srv);
    try {
      const jwt = await token(broker.keys[0]!, Date.now(), clientThumbprint);
      expect((await get(port, client, jwt)).body).toBe('VALID task-1');
      expect((await get(port, stranger, jwt)).body).toBe('BINDING_MISMATCH task-1');
      expect((await get(port, client)).body).toBe('MALFORMED -');
    } finally {
      srv.close();
    }
  });
});

describe('verifyHttpRequest on node:http2', () => {
  it('takes the presenter certificate from the session socket', async () => {
    const srv = http2.createSecureServer(tlsServerOptions(), (req, res) => {
      void verifyHttpRequest(verifier, req).then((result) => res.end(result.reason));
    });
    const port = await listening(srv);
    const session = http2.connect(`https://127.0.0.1:${port}`, { ...client, ca: ca.pem, checkServerIdentity: () => undefined });
    try {
      const jwt = await token(broker.keys[0]!, Date.now(), clientThumbprint);
      for (const [bearer, expected] of [
        [jwt, 'VALID'],
        ['not-a-token', 'MALFORMED'],
      ] as const) {
        const stream = session.request({ ':path': '/', authorization: `Bearer ${bearer}` });
        stream.end();
        let body = '';
        for await (const chunk of stream) body += String(chunk);
        expect(body).toBe(expected);
      }
    } finally {
      session.close();
      srv.close();
    }
  });
});

describe('expressMiddleware', () => {
  it('sets req.taskToken, or answers 401 with a challenge', async () => {
    const app = express();
    app.use(expressMiddleware(verifier, { operation: 'invoices:read' }));
    app.get('/', (req, res) => {
      res.json({ task: (req as typeof req & { taskToken?: { task_id: string } }).taskToken?.task_id });
    });
    const srv = https.createServer(tlsServerOptions(), app);
    const port = await listening(srv);
    try {
      const jwt = await token(broker.keys[0]!, Date.now(), clientThumbprint);
      expect(await get(port, client, jwt)).toMatchObject({ status: 200, body: '{"task":"task-1"}' });
      const refused = await get(port, stranger, jwt);
      expect(refused.status).toBe(401);
      expect(refused.challenge).toMatch(/^Bearer error="invalid_token", error_description="BINDING_MISMATCH: /);
      expect(JSON.parse(refused.body)).toMatchObject({ error: 'invalid_token', reason: 'BINDING_MISMATCH' });
      expect(await get(port, client)).toMatchObject({ status: 401, challenge: 'Bearer' });
    } finally {
      srv.close();
    }
  });
});

describe('fastifyHook', () => {
  it('sets request.taskToken, or answers 401 with a challenge', async () => {
    const app = Fastify({ https: tlsServerOptions() });
    app.decorateRequest('taskToken', null);
    app.addHook('onRequest', fastifyHook(verifier, { operation: 'invoices:read' }));
    app.get('/', (request) => ({ task: (request as typeof request & { taskToken: { task_id: string } }).taskToken.task_id }));
    await app.listen({ port: 0, host: '127.0.0.1' });
    const port = (app.server.address() as AddressInfo).port;
    try {
      const jwt = await token(broker.keys[0]!, Date.now(), clientThumbprint);
      expect(await get(port, client, jwt)).toMatchObject({ status: 200, body: '{"task":"task-1"}' });
      const refused = await get(port, stranger, jwt);
      expect(refused.status).toBe(401);
      expect(refused.challenge).toMatch(/^Bearer error="invalid_token"/);
      expect(await get(port, client, 'x.y.z')).toMatchObject({ status: 401 });
    } finally {
      await app.close();
    }
  });
});
