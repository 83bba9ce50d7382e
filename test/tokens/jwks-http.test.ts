import { createRemoteJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JWKS_PATH, jwksRoute } from '../../src/http/ops-routes.js';
import { OpsHttpServer } from '../../src/http/ops-server.js';
import { JWKS_MAX_AGE_SECONDS } from '../../src/tokens/key-publication.js';
import { silentLogger } from '../../src/observability/logger.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { SigningKeyRing } from '../../src/tokens/keyring.js';
import { signTaskToken, TASK_TOKEN_TYPE, type TaskTokenClaims } from '../../src/tokens/task-token.js';
import { migratedStore, STORES } from '../helpers/db.js';
import { taskTokenClaims, TOKEN_ISSUER } from '../helpers/task-token.js';

function claims(overrides: Partial<TaskTokenClaims> = {}): TaskTokenClaims {
  return taskTokenClaims(new Date(), { jti: 'tok-http', task_id: 'task-http', ...overrides });
}

describe.each(STORES)('JWKS over HTTP on %s', (kind) => {
  let env: Awaited<ReturnType<typeof migratedStore>>;
  let ring: SigningKeyRing;
  let server: OpsHttpServer;
  let jwksUrl: URL;
  /** The ring's clock: real time plus what the test adds. */
  let offsetMs = 0;
  /** GET/HEAD requests the JWKS route answered. */
  let served = 0;

  beforeAll(async () => {
    env = await migratedStore(kind);
    ring = new SigningKeyRing({
      db: env.store.db,
      kek: KeyEncryptionKey.fromBase64(generateKekBase64()),
      alg: 'ES256',
      maxTokenTtlSeconds: 600,
      clock: () => new Date(Date.now() + offsetMs),
      logger: silentLogger(),
    });
    await ring.init();
    server = new OpsHttpServer({ logger: silentLogger() });
    const route = jwksRoute(ring);
    server.route(JWKS_PATH, (...args) => {
      served += 1;
      return route(...args);
    });
    const port = await server.listen('127.0.0.1', 0);
    jwksUrl = new URL(`http://127.0.0.1:${port}${JWKS_PATH}`);
  });
  afterAll(async () => {
    await server?.close();
    await env?.cleanup();
  });

  it('serves the key set as application/jwk-set+json with a cache lifetime', async () => {
    const response = await fetch(jwksUrl);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/jwk-set+json');
    expect(response.headers.get('cache-control')).toBe(`public, max-age=${JWKS_MAX_AGE_SECONDS}`);
    expect(JWKS_MAX_AGE_SECONDS).toBe(60);
    const body = (await response.json()) as { keys: Array<Record<string, unknown>> };
    const active = await ring.activeKey();
    expect(body).toEqual({ keys: [active.publicJwk] });
    expect(body.keys[0]).not.toHaveProperty('d');
  });

  it('HEAD gives the same headers and no body; the query string is ignored', async () => {
    const get = await fetch(`${jwksUrl.href}?x=1`);
    const getBody = await get.text();
    const head = await fetch(jwksUrl, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe('application/jwk-set+json');
    expect(head.headers.get('content-length')).toBe(String(Buffer.byteLength(getBody)));
    expect(await head.text()).toBe('');
  });

  it('a resource server verifies tokens with createRemoteJWKSet across a rotation; a key set fetched during pre-publication already has the next key', async () => {
    const JWKS = createRemoteJWKSet(jwksUrl, { cooldownDuration: 0 });
    const options = { issuer: TOKEN_ISSUER, audience: 'spiffe://a.test/target', typ: TASK_TOKEN_TYPE, algorithms: ['ES256', 'EdDSA'] };
    const before = await signTaskToken(await ring.activeKey(), claims());
    const verified = await jwtVerify(before, JWKS, options);
    expect(verified.payload).toMatchObject({ task_id: 'task-http', cnf: { 'x5t#S256': '47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU' } });
    expect(verified.protectedHeader).toMatchObject({ typ: 'task+jwt', kid: (await ring.activeKey()).kid });

    const { kid, retiredKid, activatesAt } = await ring.rotate();
    // Published at once, signing only from activates_at: the old key still signs.
    const published = (await (await fetch(jwksUrl)).json()) as { keys: Array<{ kid: string }> };
    expect(published.keys.map((k) => k.kid)).toEqual([retiredKid, kid]);
    expect((await ring.activeKey()).kid).toBe(retiredKid);
    // A consumer that fetches the key set now (another one, with an empty cache) ...
    const later = createRemoteJWKSet(jwksUrl, { cooldownDuration: 0 });
    const during = await signTaskToken(await ring.activeKey(), claims({ jti: 'tok-during' }));
    expect((await jwtVerify(during, later, options)).protectedHeader.kid).toBe(retiredKid);
    const fetches = served;

    // ... verifies the next key's tokens after activation from that copy: no new request.
    offsetMs = activatesAt.getTime() - Date.now();
    const after = await signTaskToken(await ring.activeKey(), claims({ jti: 'tok-after' }));
    expect((await jwtVerify(after, later, options)).protectedHeader.kid).toBe(kid);
    expect(served).toBe(fetches);
    // The first consumer's copy predates the rotation: it meets an unknown kid and fetches again.
    expect((await jwtVerify(after, JWKS, options)).protectedHeader.kid).toBe(kid);
    expect(served).toBe(fetches + 1);
    expect((await jwtVerify(before, JWKS, options)).protectedHeader.kid).toBe(retiredKid);

    const tampered = after.replace(/\.[^.]+\./, `.${Buffer.from(JSON.stringify(claims({ scope: 'admin' }))).toString('base64url')}.`);
    await expect(jwtVerify(tampered, JWKS, options)).rejects.toThrow(/signature verification failed/);
  });
});
