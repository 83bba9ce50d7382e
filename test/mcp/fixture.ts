/**
 * An MCP server guarded by a real broker, reached over real mTLS by real SDK clients: the MCP
 * server (Streamable HTTP, stateless: one McpServer per request, the guard shared) presents an
 * SVID of a.test and asks for a client certificate; each client presents its own SVID through an
 * undici Agent. The one tool, `report.generate`, runs until the test opens its gate (or it is
 * aborted), issues a task token and returns it in its result.
 */
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { constants } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { Agent, fetch as undiciFetch } from 'undici';
import { z } from 'zod';
import { TaskBrokerClient } from '../../src/client/task-broker-client.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import { guardMcpTasks, requesterAuthInfo, type GuardBroker, type GuardOptions, type McpTaskGuard, type ToolTaskContext } from '../../src/mcp/index.js';
import { tlsIdentityFrom, type X509Source } from '../../src/spiffe/x509-source.js';
import { BROKER_ID, type TestBroker } from '../helpers/broker.js';
import { pemOf, type PemSvid, type TrustDomainPki } from '../helpers/pki.js';

export const MCP_SERVER = 'spiffe://a.test/ns/mcp/sa/mcp-server';
export const ALICE = 'spiffe://a.test/ns/agents/sa/alice';
export const BOB = 'spiffe://a.test/ns/agents/sa/bob';
export const TOOL = 'report.generate';

export const MCP_POLICY = `
version: 1
admins: [spiffe://a.test/ns/platform/sa/admin]
rules:
  - name: mcp-tools
    callers: { trust_domains: [a.test] }
    actions: ["${TOOL}"]
    audiences: ["${MCP_SERVER}"]
    scopes: ["*"]
    gateways: ["${MCP_SERVER}"]
    result_retention: 1h
`;

/** The works the tool is running, by task ID: the test ends each one when it wants. */
export class Works {
  readonly #gates = new Map<string, { open: (text: string) => void; fail: (err: Error) => void; context: ToolTaskContext }>();
  readonly #waiters = new Map<string, (context: ToolTaskContext) => void>();
  readonly started: ToolTaskContext[] = [];
  /** Tokens the works issued, by task ID. */
  readonly tokens = new Map<string, string>();

  run = async (args: { title: string }, context: ToolTaskContext): Promise<CallToolResult> => {
    this.started.push(context);
    const text = await new Promise<string>((resolve, reject) => {
      this.#gates.set(context.taskId, { open: resolve, fail: reject, context });
      context.signal.addEventListener('abort', () => reject(new Error(`aborted: ${String(context.signal.reason)}`)), { once: true });
      this.#waiters.get(context.taskId)?.(context);
    });
    const { token } = await context.issueToken({ scopes: ['reports:write'], ttlSeconds: 60 });
    this.tokens.set(context.taskId, token);
    return { content: [{ type: 'text', text: `${args.title}: ${text}` }] };
  };

  /** Resolves with the work of `taskId` once it runs. */
  running(taskId: string): Promise<ToolTaskContext> {
    const gate = this.#gates.get(taskId);
    if (gate) return Promise.resolve(gate.context);
    return new Promise((resolve) => this.#waiters.set(taskId, resolve));
  }

  async finish(taskId: string, text: string): Promise<void> {
    await this.running(taskId);
    this.#gates.get(taskId)?.open(text);
  }

  async fail(taskId: string, message: string): Promise<void> {
    await this.running(taskId);
    this.#gates.get(taskId)?.fail(new Error(message));
  }
}

export interface McpFixture {
  url: URL;
  guard: McpTaskGuard;
  works: Works;
  /** The MCP server's own broker client (its SVID). */
  gatewayClient: TaskBrokerClient;
  /** The TLS connections the MCP server accepted: the client's SAN, and whether the session was resumed. */
  connections: Array<{ peer: string | undefined; resumed: boolean }>;
  /** A connected MCP client presenting an SVID for `spiffeId`; with `bearer`, no certificate but that token (none when empty). */
  connect(spiffeId: string, options?: { bearer?: string; pki?: TrustDomainPki; viaIntermediate?: boolean }): Promise<Client>;
  close(): Promise<void>;
}

/** An X509Source with a fixed SVID, over the test broker's bundles. */
export function staticSource(svid: PemSvid, t: TestBroker): X509Source {
  const identity = tlsIdentityFrom(svid.certChainPem, svid.keyPem);
  return { current: () => identity, onChange: () => () => undefined, bundles: t.bundles, close: () => undefined };
}

/** undici's fetch through an Agent presenting `svid` and trusting `ca`, checking the server's SPIFFE ID instead of a host name. */
export function mtlsFetch(svid: PemSvid | undefined, ca: string, serverId: string): { fetch: FetchLike; agent: Agent } {
  const agent = new Agent({
    connect: {
      ...(svid ? { cert: svid.certChainPem, key: svid.keyPem } : {}),
      ca,
      checkServerIdentity: (_host: string, cert: PeerCertificate) =>
        cert.subjectaltname?.split(', ').includes(`URI:${serverId}`) ? undefined : new Error(`the server is not ${serverId}`),
    },
  });
  const fetch = ((url: string | URL, init?: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: agent })) as unknown as FetchLike;
  return { fetch, agent };
}

export interface McpFixtureOptions extends Partial<Omit<GuardOptions, 'broker'>> {
  /** Where the guard's broker client connects (default: the test broker). */
  brokerAddress?: string;
  /** Wraps the guard's broker client (the real one), e.g. to hold an answer back. */
  wrapBroker?: (broker: GuardBroker) => GuardBroker;
}

export async function startMcpFixture(t: TestBroker, options: McpFixtureOptions = {}): Promise<McpFixture> {
  const { brokerAddress, wrapBroker, ...guardOptions } = options;
  const serverSvid = await pemOf(await mintX509Svid(t.a.root, MCP_SERVER));
  const gatewayClient = new TaskBrokerClient({
    address: brokerAddress ?? t.address,
    serverId: BROKER_ID,
    source: staticSource(serverSvid, t),
    deadlineMs: 3_000,
  });
  const guard = guardMcpTasks({
    broker: wrapBroker ? wrapBroker(gatewayClient) : gatewayClient,
    audience: MCP_SERVER,
    scopes: ['reports:write'],
    pollIntervalMs: 100,
    ...guardOptions,
  });
  const works = new Works();

  const mcpServer = (): McpServer => {
    const server = new McpServer({ name: 'reports', version: '1.0.0' }, guard.serverOptions());
    guard.registerToolTask(server, TOOL, { description: 'Generates a report', inputSchema: { title: z.string() } }, works.run);
    guard.install(server);
    return server;
  };

  const https: Server = createServer(
    {
      cert: serverSvid.certChainPem,
      key: serverSvid.keyPem,
      ca: [t.a.root.pem, t.b.root.pem],
      requestCert: true,
      rejectUnauthorized: false,
      // No resumption: a resumed session presents only the client's leaf (see requesterAuthInfo).
      secureOptions: constants.SSL_OP_NO_TICKET,
    },
    (req, res) => {
      const auth = requesterAuthInfo(req);
      if (auth) Object.assign(req, { auth });
      const server = mcpServer();
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
      res.on('close', () => {
        void transport.close();
        void server.close();
      });
      server
        .connect(transport)
        .then(() => transport.handleRequest(req, res))
        .catch((err: unknown) => {
          if (!res.headersSent) res.writeHead(500).end(String(err));
        });
    },
  );
  const connections: McpFixture['connections'] = [];
  https.on('secureConnection', (socket: TLSSocket) => {
    connections.push({ peer: (socket.getPeerCertificate() as PeerCertificate | undefined)?.subjectaltname, resumed: socket.isSessionReused() });
  });
  await new Promise<void>((resolve) => https.listen(0, '127.0.0.1', resolve));
  const url = new URL(`https://127.0.0.1:${(https.address() as AddressInfo).port}/mcp`);
  const clients: Array<{ client: Client; agent: Agent }> = [];

  return {
    url,
    guard,
    works,
    gatewayClient,
    connections,
    async connect(spiffeId, connectOptions = {}) {
      const pki = connectOptions.pki ?? (spiffeId.startsWith('spiffe://b.test/') ? t.b : t.a);
      const issuer = connectOptions.viaIntermediate ? pki.intermediate : pki.root;
      const svid = connectOptions.bearer !== undefined ? undefined : await pemOf(await mintX509Svid(issuer, spiffeId));
      const { fetch, agent } = mtlsFetch(svid, t.a.root.pem, MCP_SERVER);
      const client = new Client({ name: `client-${spiffeId}`, version: '1.0.0' });
      const transport = new StreamableHTTPClientTransport(url, {
        fetch,
        ...(connectOptions.bearer ? { requestInit: { headers: { authorization: `Bearer ${connectOptions.bearer}` } } } : {}),
      });
      await client.connect(transport);
      clients.push({ client, agent });
      return client;
    },
    async close() {
      for (const { client, agent } of clients.splice(0)) {
        await client.close().catch(() => undefined);
        await agent.close().catch(() => undefined);
      }
      await guard.close(1_000);
      https.closeAllConnections();
      await new Promise((resolve) => https.close(resolve));
      gatewayClient.close();
    },
  };
}
