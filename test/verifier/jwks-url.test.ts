/**
 * Keys from a JWKS URL: a document the broker would serve is used; one larger than the bound
 * (1 MiB), declared or streamed, is refused without being held, and the verifier is not ready.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTaskTokenVerifier } from '../../src/verifier/index.js';
import { AUDIENCE, FakeBroker, signingKey } from './fakes.js';

describe('a JWKS URL', () => {
  let server: Server;
  let base: string;
  const key = signingKey();

  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === '/jwks') return res.end(JSON.stringify({ keys: [key.publicJwk] }));
      if (req.url === '/declared') {
        res.writeHead(200, { 'content-length': String(2 << 20) });
        return res.end();
      }
      // Streamed without a length: 2 MiB of a JSON string.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"keys": [], "padding": "');
      for (let i = 0; i < 2048; i++) res.write('x'.repeat(1024));
      res.end('"}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const verifierFor = (path: string) =>
    createTaskTokenVerifier({
      broker: new FakeBroker(),
      audience: AUDIENCE,
      jwks: `${base}${path}`,
      issuer: 'spiffe://a.test/broker',
      revocations: 'none',
      reporting: false,
    });

  it('loads the keys of a document the broker would serve', async () => {
    const verifier = verifierFor('/jwks');
    await expect(verifier.ready()).resolves.toBeUndefined();
    await verifier.close();
  });

  it.each(['/declared', '/streamed'])('refuses a document over 1 MiB (%s)', async (path) => {
    const verifier = verifierFor(path);
    await expect(verifier.ready()).rejects.toThrow(/more than 1048576/);
    await verifier.close();
  });
});
