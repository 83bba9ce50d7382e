/**
 * The broker's SVID and trust bundles from the SPIFFE Workload API (a SPIRE agent).
 *
 * `WorkloadApiSource` is an `X509Source`: its SVID is what the TLS server serves with (swapped on
 * each new SVID; open connections carry on), and it fills a `TrustBundleSet` (connections are
 * verified again whenever it changes).
 *
 * - Identity: the first X509-SVID of each FetchX509SVID message (the default identity), or the
 *   one whose SPIFFE ID is `spiffeId`. DER is turned into PEM and checked like a file SVID
 *   (`tlsIdentityFrom`); an unusable update is refused with a log line and the last good SVID
 *   stays.
 * - Bundles: every FetchX509Bundles message replaces the whole set, so a trust domain that
 *   disappears from it is no longer trusted. Until the first such message arrives (or when the
 *   agent does not implement FetchX509Bundles), the bundles in the FetchX509SVID messages (the
 *   SVID's own trust domain plus `federated_bundles`) are used the same way.
 * - Agent gone: the last SVID keeps being served until it expires. A warning is logged when the
 *   stream has been down for `staleWarningMs`, another when the SVID is within
 *   `expiryWarningFraction` of its lifetime of expiring, an error once it has expired; from
 *   then on `ready()` is false.
 */
import { createPrivateKey } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from '../observability/logger.js';
import { TrustBundleSet, type X509Bundle } from './bundle.js';
import { parseDerCertificates, type ParsedCertificate } from './certificate.js';
import { parseTrustDomain, SpiffeId } from './id.js';
import {
  WorkloadApiClient,
  parseWorkloadApiAddress,
  type BackoffOptions,
  type StreamWatch,
  type WorkloadApiAddress,
  type X509BundlesResponse,
  type X509SvidMessage,
  type X509SvidResponse,
} from './workload-api.js';
import { tlsIdentityFrom, type TlsIdentity, type X509Source, type X509SourceStatus } from './x509-source.js';

export interface WorkloadApiSourceOptions {
  /** The endpoint: `unix:///path/to/agent.sock` (or `unix:/path`, `tcp://IP:PORT`), e.g. `SPIFFE_ENDPOINT_SOCKET`. */
  address: string;
  logger: Logger;
  /** Serve with the SVID for this SPIFFE ID rather than the first (default) one. */
  spiffeId?: string;
  /** The set to fill; a new one by default. The source owns every trust domain in it. */
  bundles?: TrustBundleSet;
  /** Reconnect backoff of the streams (default 100 ms doubling to 30 s). */
  backoff?: BackoffOptions;
  /** Warn once the SVID stream has been down this long (default 60 s). */
  staleWarningMs?: number;
  /** Warn when less than this fraction of the SVID's lifetime is left (default 0.2). */
  expiryWarningFraction?: number;
  /** How often the warnings are checked (default 5 s). */
  monitorIntervalMs?: number;
  clock?: () => Date;
}

/** A snapshot for readiness probes and metrics. */
export interface WorkloadApiStatus extends X509SourceStatus {
  /** The endpoint as configured. */
  readonly address: string;
  /** An SVID has arrived and has not expired: the broker can serve. */
  readonly ready: boolean;
  /** The FetchX509SVID stream is open and has delivered on its current call. */
  readonly connected: boolean;
  /** When the FetchX509SVID stream went down; undefined while connected. */
  readonly disconnectedSince: Date | undefined;
  /** Why a stream last failed, if one has. */
  readonly lastError: string | undefined;
  /** The SPIFFE ID being served. */
  readonly spiffeId: string | undefined;
  /** When the last usable FetchX509SVID message arrived (rotated or not). */
  readonly lastSvidUpdate: Date | undefined;
  /** Expiry of the SVID being served. */
  readonly svidNotAfter: Date | undefined;
  /** When the last usable bundle update arrived (changed or not). */
  readonly lastBundleUpdate: Date | undefined;
  /** Per trusted trust domain: when its bundle last changed (appeared or got other CAs) and how many CAs it holds. */
  readonly bundles: Readonly<Record<string, { readonly updatedAt: Date; readonly authorities: number }>>;
  /** Updates refused as unusable since start (SVIDs and bundles). */
  readonly rejectedUpdates: number;
}

interface Current {
  identity: TlsIdentity;
  notBefore: Date;
}

/**
 * Turns one X509SVID message into a serving identity: the chain (concatenated DER, leaf first)
 * and the PKCS#8 DER key become PEM, and the pair is checked like any SVID the broker serves
 * with. Throws saying what is wrong; the message's key material never appears in the error.
 */
export function tlsIdentityFromX509SvidMessage(svid: X509SvidMessage, now = new Date()): TlsIdentity & { notBefore: Date } {
  if (!svid.spiffeId) throw new Error('the X509-SVID has no spiffe_id');
  if (svid.x509Svid.length === 0) throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid is empty`);
  if (svid.x509SvidKey.length === 0) throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid_key is empty`);
  let chain: ParsedCertificate[];
  try {
    chain = parseDerCertificates(svid.x509Svid);
  } catch (err) {
    throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid: ${(err as Error).message}`);
  }
  let keyPem: string;
  try {
    keyPem = createPrivateKey({ key: svid.x509SvidKey, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString();
  } catch {
    throw new Error(`X509-SVID ${svid.spiffeId}: x509_svid_key is not an unencrypted PKCS#8 DER private key`);
  }
  const identity = tlsIdentityFrom(chain.map((c) => derToPem(c.der)).join(''), keyPem, now);
  if (identity.spiffeId.toString() !== svid.spiffeId) {
    throw new Error(`X509-SVID ${svid.spiffeId}: the certificate is for ${identity.spiffeId.toString()}`);
  }
  const leaf = chain[0] as ParsedCertificate;
  return { ...identity, notBefore: leaf.notBefore };
}

/** Reads a Workload API bundle map (trust domain SPIFFE ID → concatenated DER CAs). Throws on anything unusable. */
export function bundlesFromWorkloadApiMap(map: Readonly<Record<string, Uint8Array>>): X509Bundle[] {
  const bundles = new Map<string, X509Bundle>();
  for (const [key, der] of Object.entries(map)) {
    let trustDomain: string;
    try {
      trustDomain = parseTrustDomain(key);
    } catch (err) {
      throw new Error(`bundle key "${key}" is not a trust domain: ${(err as Error).message}`);
    }
    try {
      bundles.set(trustDomain, { trustDomain, authorities: parseDerCertificates(der) });
    } catch (err) {
      throw new Error(`bundle for ${trustDomain}: ${(err as Error).message}`);
    }
  }
  return [...bundles.values()];
}

function derToPem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

function sameAuthorities(a: X509Bundle | undefined, b: X509Bundle): boolean {
  if (!a || a.authorities.length !== b.authorities.length) return false;
  return a.authorities.every((cert, i) => cert.der.equals(b.authorities[i]?.der ?? Buffer.alloc(0)));
}

export class WorkloadApiSource implements X509Source {
  /** The trust bundles from the Workload API; pass this as the broker's bundle source. */
  readonly bundles: TrustBundleSet;
  readonly address: WorkloadApiAddress;
  readonly #logger: Logger;
  readonly #clock: () => Date;
  readonly #events = new EventEmitter();
  readonly #client: WorkloadApiClient;
  readonly #svidWatch: StreamWatch;
  readonly #bundleWatch: StreamWatch;
  readonly #monitor: NodeJS.Timeout;
  readonly #wantedId: string | undefined;
  readonly #staleWarningMs: number;
  readonly #expiryWarningFraction: number;
  #current: Current | undefined;
  #lastSvidUpdate: Date | undefined;
  #lastBundleUpdate: Date | undefined;
  #bundleTimes = new Map<string, Date>();
  #bundlesStreamDelivered = false;
  #disconnectedSince: Date | undefined;
  #lastRejection: string | undefined;
  #rejected = 0;
  #closed = false;
  #warned = { stale: false, expiringFor: undefined as Current | undefined, expiredFor: undefined as Current | undefined };

  private constructor(options: WorkloadApiSourceOptions) {
    this.address = parseWorkloadApiAddress(options.address);
    this.#wantedId = options.spiffeId === undefined ? undefined : SpiffeId.parse(options.spiffeId).toString();
    this.#logger = options.logger.child({ workloadApi: this.address.uri });
    this.#clock = options.clock ?? (() => new Date());
    this.#staleWarningMs = options.staleWarningMs ?? 60_000;
    this.#expiryWarningFraction = options.expiryWarningFraction ?? 0.2;
    this.bundles = options.bundles ?? new TrustBundleSet();
    this.#client = new WorkloadApiClient({ address: this.address, logger: options.logger, backoff: options.backoff });
    const down = () => {
      this.#disconnectedSince ??= this.#clock();
    };
    // Counts as down until the first message, so an agent that never answers is reported too.
    down();
    this.#svidWatch = this.#client.watchX509Svids({
      onMessage: (message) => {
        this.#disconnectedSince = undefined;
        this.#warned.stale = false;
        this.#onX509SvidResponse(message);
      },
      onDisconnect: down,
    });
    this.#bundleWatch = this.#client.watchX509Bundles({ onMessage: (message) => this.#onX509BundlesResponse(message) });
    this.#monitor = setInterval(() => this.#check(), options.monitorIntervalMs ?? 5_000);
    this.#monitor.unref();
  }

  /**
   * Starts following the Workload API and returns at once; the source is not ready until the
   * first usable SVID arrives (see waitUntilReady). Rejects only for a malformed address or ID.
   */
  static connect(options: WorkloadApiSourceOptions): Promise<WorkloadApiSource> {
    try {
      return Promise.resolve(new WorkloadApiSource(options));
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** The last good SVID, or undefined before the first. Still returned after it expired (see ready()). */
  current(): TlsIdentity | undefined {
    return this.#current?.identity;
  }

  onChange(listener: (identity: TlsIdentity) => void): () => void {
    this.#events.on('change', listener);
    return () => this.#events.off('change', listener);
  }

  /** An SVID has arrived and has not expired. */
  ready(): boolean {
    return this.#current !== undefined && this.#current.identity.notAfter.getTime() > this.#clock().getTime();
  }

  status(): WorkloadApiStatus {
    const bundles: Record<string, { updatedAt: Date; authorities: number }> = {};
    for (const td of this.bundles.trustDomains()) {
      bundles[td] = { updatedAt: this.#bundleTimes.get(td) ?? new Date(0), authorities: this.bundles.getX509Bundle(td)?.authorities.length ?? 0 };
    }
    return {
      address: this.address.uri,
      ready: this.ready(),
      connected: this.#svidWatch.connected,
      disconnectedSince: this.#disconnectedSince,
      lastError: this.#svidWatch.lastError ?? this.#bundleWatch.lastError,
      spiffeId: this.#current?.identity.spiffeId.toString(),
      lastSvidUpdate: this.#lastSvidUpdate,
      svidNotAfter: this.#current?.identity.notAfter,
      lastBundleUpdate: this.#lastBundleUpdate,
      bundles,
      rejectedUpdates: this.#rejected,
    };
  }

  /**
   * Resolves with the identity once ready(); rejects after `timeoutMs` saying what was last seen
   * (stream error, refused update), or when the source is closed first.
   */
  waitUntilReady(timeoutMs: number): Promise<TlsIdentity> {
    if (this.ready() && this.#current) return Promise.resolve(this.#current.identity);
    if (this.#closed) return Promise.reject(new Error('the Workload API source is closed'));
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        offChange();
        this.#events.off('closed', onClosed);
      };
      const offChange = this.onChange((identity) => {
        if (!this.ready()) return;
        done();
        resolve(identity);
      });
      const onClosed = () => {
        done();
        reject(new Error('the Workload API source was closed before an SVID arrived'));
      };
      this.#events.on('closed', onClosed);
      const timer = setTimeout(() => {
        done();
        const last = [this.#svidWatch.lastError && `last stream error: ${this.#svidWatch.lastError}`, this.#lastRejection && `last refused update: ${this.#lastRejection}`]
          .filter(Boolean)
          .join('; ');
        reject(new Error(`no usable X509-SVID from the Workload API at ${this.address.uri} within ${timeoutMs} ms${last ? ` (${last})` : ''}`));
      }, timeoutMs);
    });
  }

  /** Stops following the Workload API. The bundle set and the last identity stay as they are. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#monitor);
    this.#client.close();
    this.#events.emit('closed');
  }

  #refuse(what: string, reason: string): void {
    this.#rejected += 1;
    this.#lastRejection = reason;
    this.#logger.error({ reason }, `Workload API sent an unusable ${what}; keeping the last good one`);
  }

  #onX509SvidResponse(message: X509SvidResponse): void {
    const now = this.#clock();
    let chosen: X509SvidMessage | undefined;
    let next: (TlsIdentity & { notBefore: Date }) | undefined;
    try {
      if (message.svids.length === 0) throw new Error('the response holds no X509-SVID');
      chosen = this.#wantedId === undefined ? message.svids[0] : message.svids.find((s) => s.spiffeId === this.#wantedId);
      if (!chosen) throw new Error(`no X509-SVID for ${this.#wantedId ?? ''} among ${message.svids.map((s) => s.spiffeId).join(', ')}`);
      next = tlsIdentityFromX509SvidMessage(chosen, now);
    } catch (err) {
      this.#refuse('X509-SVID update', (err as Error).message);
    }
    if (next) {
      this.#lastSvidUpdate = now;
      const previous = this.#current?.identity;
      if (!previous || previous.certChainPem !== next.certChainPem || previous.keyPem !== next.keyPem) {
        const { notBefore, ...identity } = next;
        this.#current = { identity, notBefore };
        this.#logger.info(
          { spiffeId: identity.spiffeId.toString(), notAfter: identity.notAfter.toISOString() },
          previous ? 'X509-SVID rotated by the Workload API' : 'X509-SVID received from the Workload API',
        );
        this.#events.emit('change', identity);
      }
    }
    // Bundles ride along with the SVIDs; they are used until FetchX509Bundles speaks for itself.
    if (this.#bundlesStreamDelivered) return;
    let bundles: X509Bundle[];
    try {
      const own: Record<string, Uint8Array> = {};
      for (const svid of message.svids) {
        if (svid.bundle.length > 0 && svid.spiffeId) own[SpiffeId.parse(svid.spiffeId).trustDomain] = svid.bundle;
      }
      bundles = bundlesFromWorkloadApiMap({ ...message.federatedBundles, ...own });
    } catch (err) {
      this.#refuse('bundle update (with the X509-SVID)', (err as Error).message);
      return;
    }
    this.#applyBundles(bundles, 'FetchX509SVID', now);
  }

  #onX509BundlesResponse(message: X509BundlesResponse): void {
    const now = this.#clock();
    let bundles: X509Bundle[];
    try {
      bundles = bundlesFromWorkloadApiMap(message.bundles);
    } catch (err) {
      this.#refuse('bundle update', (err as Error).message);
      return;
    }
    if (this.#applyBundles(bundles, 'FetchX509Bundles', now)) this.#bundlesStreamDelivered = true;
  }

  /** Replaces the whole set when anything differs; returns false when the update was refused. */
  #applyBundles(bundles: X509Bundle[], from: string, now: Date): boolean {
    if (bundles.length === 0) {
      this.#refuse('bundle update', `${from} sent no trust bundle at all`);
      return false;
    }
    const own = this.#current?.identity.spiffeId.trustDomain;
    if (own && !bundles.some((b) => b.trustDomain === own)) {
      this.#refuse('bundle update', `${from} sent no bundle for the broker's own trust domain ${own}`);
      return false;
    }
    this.#lastBundleUpdate = now;
    const before = new Set(this.bundles.trustDomains());
    const added: string[] = [];
    const changed: string[] = [];
    for (const bundle of bundles) {
      if (!before.has(bundle.trustDomain)) added.push(bundle.trustDomain);
      else if (!sameAuthorities(this.bundles.getX509Bundle(bundle.trustDomain), bundle)) changed.push(bundle.trustDomain);
    }
    const removed = [...before].filter((td) => !bundles.some((b) => b.trustDomain === td));
    if (added.length + changed.length + removed.length === 0) return true;
    this.bundles.replaceAll(bundles);
    for (const td of [...added, ...changed]) this.#bundleTimes.set(td, now);
    for (const td of removed) this.#bundleTimes.delete(td);
    this.#logger.info(
      { from, trustDomains: this.bundles.trustDomains(), added: added.sort(), changed: changed.sort(), removed: removed.sort() },
      'trust bundles updated from the Workload API',
    );
    return true;
  }

  #check(): void {
    const now = this.#clock().getTime();
    const current = this.#current;
    if (this.#disconnectedSince && !this.#warned.stale && now - this.#disconnectedSince.getTime() >= this.#staleWarningMs) {
      this.#warned.stale = true;
      this.#logger.warn(
        {
          since: this.#disconnectedSince.toISOString(),
          lastError: this.#svidWatch.lastError,
          svidNotAfter: current?.identity.notAfter.toISOString(),
        },
        current ? 'no updates from the Workload API for a while; serving with the last SVID until it expires' : 'still no SVID from the Workload API',
      );
    }
    if (!current) return;
    const notAfter = current.identity.notAfter.getTime();
    const lifetime = notAfter - current.notBefore.getTime();
    if (now >= notAfter) {
      if (this.#warned.expiredFor !== current) {
        this.#warned.expiredFor = current;
        this.#logger.error(
          { spiffeId: current.identity.spiffeId.toString(), notAfter: current.identity.notAfter.toISOString(), lastError: this.#svidWatch.lastError },
          'the SVID has expired and the Workload API sent no new one; not ready',
        );
      }
    } else if (notAfter - now <= lifetime * this.#expiryWarningFraction && this.#warned.expiringFor !== current) {
      this.#warned.expiringFor = current;
      this.#logger.warn(
        { spiffeId: current.identity.spiffeId.toString(), notAfter: current.identity.notAfter.toISOString(), remainingMs: notAfter - now, connected: this.#svidWatch.connected },
        'the SVID expires soon and the Workload API has not rotated it',
      );
    }
  }
}
