/**
 * What the ops HTTP server serves: the JWKS document, liveness, readiness and metrics. The modules
 * behind them (the key ring, readiness, metrics) hand over plain values; status codes, content
 * types and caching are decided here.
 */
import type { BrokerMetrics } from '../observability/metrics.js';
import type { Readiness } from '../observability/readiness.js';
import { JWKS_MAX_AGE_SECONDS } from '../tokens/key-publication.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import type { Route } from './ops-server.js';

/** Where resource servers fetch the keys that verify task tokens offline. */
export const JWKS_PATH = '/.well-known/jwks.json';
export const METRICS_PATH = '/metrics';

/**
 * GET /.well-known/jwks.json: the public signing keys (next, active, retired still published),
 * cacheable for JWKS_MAX_AGE_SECONDS (a minute). The signing-key pre-publication period counts on
 * this lifetime (tokens/key-publication.ts): change one, and the other follows.
 */
export function jwksRoute(ring: Pick<SigningKeyRing, 'jwks'>): Route {
  return async () => ({
    status: 200,
    headers: { 'Content-Type': 'application/jwk-set+json', 'Cache-Control': `public, max-age=${JWKS_MAX_AGE_SECONDS}` },
    body: JSON.stringify(await ring.jwks()),
  });
}

/** GET /metrics: the Prometheus text format. */
export function metricsRoute(metrics: Pick<BrokerMetrics, 'expose'>): Route {
  return async () => {
    const { contentType, body } = await metrics.expose();
    return { status: 200, headers: { 'Content-Type': contentType, 'Cache-Control': 'no-store' }, body };
  };
}

/** GET /readyz: 200 when ready, 503 otherwise, with every check and why it failed. */
export function readyzRoute(readiness: Pick<Readiness, 'fresh'>, options: { maxAgeMs?: number } = {}): Route {
  return async () => {
    const report = await readiness.fresh(options.maxAgeMs ?? 1_000);
    const body = {
      status: report.ready ? 'ready' : 'not ready',
      ...(report.shuttingDown ? { shuttingDown: true } : {}),
      ...(report.checkedAt ? { checkedAt: report.checkedAt } : {}),
      checks: report.checks,
    };
    return {
      status: report.ready ? 200 : 503,
      headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' },
      body: `${JSON.stringify(body)}\n`,
    };
  };
}

/**
 * GET /healthz: liveness. Answering at all proves the process and its event loop are alive; it
 * touches nothing else (no database), and stays 200 while shutting down so a draining broker is
 * not killed early.
 */
export function healthzRoute(startedAt = Date.now()): Route {
  return () =>
    Promise.resolve({
      status: 200,
      headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' },
      body: `${JSON.stringify({ status: 'alive', uptimeSeconds: Math.round((Date.now() - startedAt) / 1000) })}\n`,
    });
}
