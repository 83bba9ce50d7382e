/**
 * What a Node team would pick instead of the broker for service-to-service tokens: node
 * `oidc-provider` (9.13) as an OAuth 2.0 authorization server for the `client_credentials`
 * grant, served over HTTPS by node:https with client certificates required, and configured as
 * its documentation says for RFC 8705:
 *
 * - client authentication `tls_client_auth` (features.mTLS.tlsClientAuth): a client is the
 *   holder of a certificate, verified by Node's TLS against the bench CA, whose URI SAN (the
 *   SPIFFE ID) is the client's registered `tls_client_auth_san_uri`;
 * - certificate-bound access tokens (features.mTLS.certificateBoundAccessTokens, client
 *   metadata `tls_client_certificate_bound_access_tokens`): `cnf.x5t#S256` of that certificate;
 * - resource indicators (RFC 8707, features.resourceIndicators): the `resource` is the SPIFFE ID
 *   of the API the token is for (its `aud`), with `accessTokenFormat: 'jwt'`, signed ES256
 *   (`typ: at+jwt`), the same lifetime as the broker's tokens;
 * - introspection (RFC 7662, features.introspection) for resource servers, themselves clients
 *   authenticated with tls_client_auth, allowed to introspect only tokens whose `aud` they are.
 *   oidc-provider refuses to introspect structured (JWT) access tokens, so the tokens to
 *   introspect are issued by a second client registration of the same workload whose resource
 *   server format is `opaque` (stored in the adapter), everything else equal;
 * - the in-memory adapter that oidc-provider ships (an LRU of 1000 entries: JWT access tokens
 *   are not stored at all, opaque ones are).
 *
 * Forked by run.ts: it gets a ServerConfig over IPC, answers { type: 'listening', port }, and
 * stops on SIGTERM or when the IPC channel closes. Run with NODE_ENV=production.
 */
import { randomBytes, type X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors, type ClientMetadata, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import {
  apiId,
  errorMessage,
  oidcApiClient,
  oidcOpaqueClient,
  oidcWorkerClient,
  SCOPES,
  send,
  TOKEN_TTL_SECONDS,
  TRUST_DOMAIN,
  workerId,
  type ServerConfig,
} from './common.js';

const OIDC_ISSUER = `https://oidc.${TRUST_DOMAIN}`;

/** The peer certificate of the request's TLS connection, parsed once per connection. */
const peerCertificates = new WeakMap<Socket, X509Certificate | undefined>();
function peerCertificate(ctx: KoaContextWithOIDC): X509Certificate | undefined {
  const socket = ctx.socket;
  if (!peerCertificates.has(socket)) peerCertificates.set(socket, (socket as TLSSocket).getPeerX509Certificate());
  return peerCertificates.get(socket);
}

async function configuration(identities: number): Promise<Configuration> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), kid: 'bench-es256', alg: 'ES256', use: 'sig' };

  const clients: ClientMetadata[] = [];
  /** Resource servers (SPIFFE IDs) each client may get tokens for, and the format of its tokens. */
  const grants = new Map<string, { audience: string; format: 'jwt' | 'opaque' }>();
  /** The audience an introspecting resource server stands for. */
  const introspectors = new Map<string, string>();
  for (let i = 0; i < identities; i++) {
    for (const [clientId, format] of [
      [oidcWorkerClient(i), 'jwt'],
      [oidcOpaqueClient(i), 'opaque'],
    ] as const) {
      clients.push({
        client_id: clientId,
        token_endpoint_auth_method: 'tls_client_auth',
        tls_client_auth_san_uri: workerId(i),
        tls_client_certificate_bound_access_tokens: true,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: SCOPES.join(' '),
      });
      grants.set(clientId, { audience: apiId(i), format });
    }
    clients.push({
      client_id: oidcApiClient(i),
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_san_uri: apiId(i),
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    });
    introspectors.set(oidcApiClient(i), apiId(i));
  }

  return {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientAuthMethods: ['tls_client_auth'],
    ttl: { ClientCredentials: TOKEN_TTL_SECONDS },
    // The one signing key is ES256 (oidc-provider's default for clients is RS256).
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    scopes: SCOPES,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // The requesting resource server may introspect the tokens issued for it, and no others.
        allowedPolicy: (_ctx, client, token) => Promise.resolve('aud' in token && token.aud === introspectors.get(client.clientId)),
      },
      revocation: { enabled: false },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        certificateBoundAccessTokens: true,
        getCertificate: (ctx) => peerCertificate(ctx),
        // node:https verified the chain (requestCert + rejectUnauthorized against the bench CA).
        certificateAuthorized: (ctx) => (ctx.socket as TLSSocket).authorized,
        certificateSubjectMatches: (ctx, property, expected) => {
          if (property !== 'tls_client_auth_san_uri') return false;
          const san = peerCertificate(ctx)?.subjectAltName ?? '';
          return san.split(', ').includes(`URI:${expected}`);
        },
      },
      resourceIndicators: {
        enabled: true,
        // A client_credentials request must name its API: no default resource.
        defaultResource: () => Promise.resolve(undefined as unknown as string),
        useGrantedResource: () => Promise.resolve(false),
        getResourceServerInfo: (_ctx, resourceIndicator, client) => {
          const grant = grants.get(client.clientId);
          if (!grant || grant.audience !== resourceIndicator) throw new errors.InvalidTarget();
          return Promise.resolve({
            scope: SCOPES.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: TOKEN_TTL_SECONDS,
            accessTokenFormat: grant.format,
            ...(grant.format === 'jwt' ? { jwt: { sign: { alg: 'ES256' as const } } } : {}),
          });
        },
      },
    },
  };
}

async function start(config: Extract<ServerConfig, { kind: 'oidc' }>): Promise<void> {
  const provider = new Provider(OIDC_ISSUER, await configuration(config.identities));
  provider.on('server_error', (_ctx, err) => console.error(`oidc-provider server_error: ${err.message}`));
  const handle = provider.callback();
  const server = createServer(
    {
      cert: readFileSync(config.certPath),
      key: readFileSync(config.keyPath),
      ca: readFileSync(config.bundlePath),
      requestCert: true,
      rejectUnauthorized: true,
    },
    // Koa answers errors itself: nothing to wait for here.
    (req, res) => void handle(req, res),
  );
  // Keep-alive connections outlive the pauses between scenarios.
  server.keepAliveTimeout = 120_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no TCP address');
    send({ type: 'listening', port: address.port });
  });
  const stop = () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('disconnect', stop);
}

if (process.send) {
  process.once('message', (message: ServerConfig) => {
    const fail = (err: unknown) => {
      send({ type: 'failed', message: errorMessage(err) });
      process.exit(1);
    };
    if (message.kind !== 'oidc') fail(new Error(`oidc-server: unexpected config ${message.kind}`));
    else start(message).catch(fail);
  });
}
