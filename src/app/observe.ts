/**
 * What the metrics follow about the broker's parts: the database pool, the SVID and its source,
 * the trust bundles, the policy and write health.
 */
import type { BrokerMetrics } from '../observability/metrics.js';
import type { PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import type { TrustBundles } from './identity.js';

/** The pool, the SVID (and its stream, when it has one) and the bundles; returns what stops following the bundles. */
export function observeInfrastructure(metrics: BrokerMetrics, parts: { store: Store; identity: X509SvidSource; bundles: TrustBundles }): () => void {
  const { store, identity, bundles } = parts;
  metrics.watchPool(() => store.poolStats());
  metrics.watchSvid(() => identity.current());
  // A file-based SVID has no stream: nothing is reported for it.
  metrics.watchSvidSource(() => {
    const status = identity.status?.();
    return status && { connected: status.connected ?? false, lastUpdate: status.lastSvidUpdate };
  });
  return metrics.watchBundles(bundles, (td) => bundles.getX509Bundle(td) !== undefined);
}

/** Policy reload failures and the run of failed writes. */
export function observeDomain(metrics: BrokerMetrics, parts: { store: Store; policy: PolicySource }): void {
  metrics.watchPolicy(() => parts.policy.status());
  metrics.watchWriteFailures(() => parts.store.writes.consecutiveFailures);
}
