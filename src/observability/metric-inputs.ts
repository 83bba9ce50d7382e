/**
 * What the metrics read at scrape time, as narrow interfaces, so that the broker's parts (the
 * SVID source, the bundle set, readiness, the pool, the listener, the policy source) fit them
 * without the metrics importing any of those parts.
 */

/** The broker's SVID as the metrics need it (a TlsIdentity fits). */
export interface SvidInfo {
  readonly notAfter: Date;
  /** When the certificate became valid; absent: age is not reported. */
  readonly notBefore?: Date;
}

/** A bundle set that announces changes per trust domain (TrustBundleSet fits). */
export interface ObservableBundles {
  trustDomains(): string[];
  onChange(listener: (trustDomain: string | undefined) => void): () => void;
}

/** A readiness verdict (a ReadinessReport fits). */
export interface ReadinessSnapshot {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, { readonly ok: boolean }>>;
}

export interface PoolStats {
  total: number;
  idle: number;
  waiting: number;
  /** The most connections the pool opens. */
  max: number;
}

/** What the gRPC listener reports at each scrape (SvidServer fits). */
export interface ConnectionStats {
  readonly openConnections: number;
  readonly handshakesInProgress: number;
  readonly connectionCount: number;
}

/** How following the policy file has gone (a PolicySource's status() fits). */
export interface PolicyReloadStatus {
  readonly reloadFailures: number;
  readonly lastReloadFailedAt?: Date;
}

/** What a streaming SVID source reports: connected now, and when it last delivered. */
export interface SvidSourceStatus {
  connected: boolean;
  lastUpdate: Date | undefined;
}
