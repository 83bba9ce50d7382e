import { Agent, request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpsHttpServer } from '../../src/http/ops-server.js';
import { silentLogger } from '../../src/observability/logger.js';
import { capturedLogger } from '../helpers/logs.js';

/** One request over node:http, so the test controls the method and keep-alive. */
function call(
  port: number,
  path: string,
  method = 'GET',
  agent?: Agent,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('OpsHttpServer', () => {
  const { logger, lines } = capturedLogger();
  const server = new OpsHttpServer({ logger });
  let port: number;

  beforeAll(async () => {
    server.route('/hello', () => Promise.resolve({ status: 200, headers: { 'Content-Type': 'application/json', 'X-Extra': 'yes' }, body: '{"hi":1}' }));
    server.route('/teapot', () => Promise.resolve({ status: 418, body: Buffer.from('short and stout') }));
    server.route('/boom', () => Promise.reject(new Error('database password is hunter2')));
    port = await server.listen('127.0.0.1', 0);
  });
  afterAll(async () => {
    await server.close();
  });

  it('binds a real port when asked for port 0', () => {
    expect(port).toBeGreaterThan(0);
  });

  it('serves a route with its status, headers and body', async () => {
    const hello = await call(port, '/hello');
    expect(hello).toMatchObject({ status: 200, body: '{"hi":1}' });
    expect(hello.headers).toMatchObject({ 'content-type': 'application/json', 'x-extra': 'yes', 'content-length': '8', 'x-content-type-options': 'nosniff' });
    const teapot = await call(port, '/teapot');
    expect(teapot).toMatchObject({ status: 418, body: 'short and stout' });
    expect(teapot.headers['content-type']).toBe('text/plain; charset=utf-8');
  });

  it('answers 404 for unknown paths, whatever the method', async () => {
    expect(await call(port, '/nope')).toMatchObject({ status: 404, body: 'not found\n' });
    expect((await call(port, '/hello/')).status).toBe(404);
    expect((await call(port, '/nope', 'POST')).status).toBe(404);
  });

  it('answers 405 with Allow: GET, HEAD for other methods on a known path', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const res = await call(port, '/hello', method);
      expect(res.status, method).toBe(405);
      expect(res.headers.allow, method).toBe('GET, HEAD');
    }
  });

  it('answers 500 with a generic body when a handler throws, and logs the error', async () => {
    const res = await call(port, '/boom');
    expect(res).toMatchObject({ status: 500, body: 'internal server error\n' });
    expect(res.body).not.toContain('hunter2');
    const logged = lines().find((l) => l.msg === 'HTTP handler failed');
    expect(logged).toMatchObject({ level: 'error', path: '/boom', method: 'GET' });
    expect(JSON.stringify(logged)).toContain('database password is hunter2');
  });

  it('refuses a route registered twice or without a leading slash', () => {
    expect(() => server.route('/hello', () => Promise.resolve({ status: 200, body: '' }))).toThrow('route /hello is already registered');
    expect(() => server.route('hello', () => Promise.resolve({ status: 200, body: '' }))).toThrow(/must start with '\/'/);
  });

  it('reports a port that is already taken', async () => {
    const other = new OpsHttpServer({ logger: silentLogger() });
    await expect(other.listen('127.0.0.1', port)).rejects.toThrow(new RegExp(`cannot listen for HTTP on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
  });
});

describe('OpsHttpServer.close', () => {
  it('closes idle keep-alive connections and resolves promptly', async () => {
    const server = new OpsHttpServer({ logger: silentLogger() });
    server.route('/x', () => Promise.resolve({ status: 200, body: 'x' }));
    const port = await server.listen('127.0.0.1', 0);
    const agent = new Agent({ keepAlive: true });
    try {
      expect((await call(port, '/x', 'GET', agent)).status).toBe(200);
      // The agent now holds an idle keep-alive socket to the server.
      expect(Object.values(agent.freeSockets).flat().length).toBe(1);
      const started = Date.now();
      await server.close();
      expect(Date.now() - started).toBeLessThan(1000);
      await expect(call(port, '/x')).rejects.toThrow(/ECONNREFUSED/);
      await server.close();
    } finally {
      agent.destroy();
    }
  });

  it('lets an in-flight request finish before resolving', async () => {
    const server = new OpsHttpServer({ logger: silentLogger() });
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered: () => void = () => undefined;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    server.route('/slow', async () => {
      entered();
      await gate;
      return { status: 200, body: 'done' };
    });
    const port = await server.listen('127.0.0.1', 0);
    const agent = new Agent({ keepAlive: true });
    try {
      const response = call(port, '/slow', 'GET', agent);
      await inHandler;
      let closed = false;
      const closing = server.close().then(() => (closed = true));
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(closed).toBe(false);
      release();
      const res = await response;
      expect(res).toMatchObject({ status: 200, body: 'done' });
      expect(res.headers.connection).toBe('close');
      await closing;
      expect(closed).toBe(true);
    } finally {
      agent.destroy();
    }
  });
});
