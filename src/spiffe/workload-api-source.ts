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
 *   SVID's own trust domain plus `federated_bundles`) are used the same way
 *   (workload-api-bundles.ts).
 * - Agent gone: the last SVID keeps being served until it expires. A warning is logged when the
 *   stream has been down for `staleWarningMs`, another when the SVID is within
 *   `expiryWarningFraction` of its lifetime of expiring, an error once it has expired
 *   (workload-api-watchdog.ts); from then on `ready()` is false.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../observability/logger.js';
import { TrustBundleSet } from './bundle.js';
import { SpiffeId } from './id.js';
import { WorkloadApiClient, parseWorkloadApiAddress, type WorkloadApiAddress, type X509SvidResponse } from './workload-api.js';
import { WorkloadApiBundles } from './workload-api-bundles.js';
import { servingIdentityOf } from './workload-api-messages.js';
import type { BackoffOptions, StreamWatch } from './workload-api-stream.js';
import { WorkloadApiWatchdog, type ServedSvid } from './workload-api-watchdog.js';
import type { TlsIdentity, X509Source, X509SourceStatus } from './x509-source.js';

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
  readonly #bundles: WorkloadApiBundles;
  readonly #watchdog: WorkloadApiWatchdog;
  #current: ServedSvid | undefined;
  #lastSvidUpdate: Date | undefined;
  #disconnectedSince: Date | undefined;
  #lastRejection: string | undefined;
  #rejected = 0;
  #closed = false;

  private constructor(options: WorkloadApiSourceOptions) {
    this.address = parseWorkloadApiAddress(options.address);
    this.#wantedId = options.spiffeId === undefined ? undefined : SpiffeId.parse(options.spiffeId).toString();
    this.#logger = options.logger.child({ workloadApi: this.address.uri });
    this.#clock = options.clock ?? (() => new Date());
    this.#watchdog = new WorkloadApiWatchdog(this.#logger, {
      staleWarningMs: options.staleWarningMs ?? 60_000,
      expiryWarningFraction: options.expiryWarningFraction ?? 0.2,
    });
    this.bundles = options.bundles ?? new TrustBundleSet();
    this.#bundles = new WorkloadApiBundles(this.bundles, this.#logger, (what, reason) => this.#refuse(what, reason));
    this.#client = new WorkloadApiClient({ address: this.address, logger: options.logger, backoff: options.backoff });
    const down = () => {
      this.#disconnectedSince ??= this.#clock();
    };
    // Counts as down until the first message, so an agent that never answers is reported too.
    down();
    this.#svidWatch = this.#client.watchX509Svids({
      onMessage: (message) => {
        this.#disconnectedSince = undefined;
        this.#watchdog.delivered();
        this.#onX509SvidResponse(message);
      },
      onDisconnect: down,
    });
    this.#bundleWatch = this.#client.watchX509Bundles({
      onMessage: (message) => this.#bundles.fromX509BundlesResponse(message, this.#current?.identity.spiffeId.trustDomain, this.#clock()),
    });
    this.#monitor = setInterval(
      () => this.#watchdog.check(this.#clock().getTime(), this.#disconnectedSince, this.#current, this.#svidWatch),
      options.monitorIntervalMs ?? 5_000,
    );
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
    return {
      address: this.address.uri,
      ready: this.ready(),
      connected: this.#svidWatch.connected,
      disconnectedSince: this.#disconnectedSince,
      lastError: this.#svidWatch.lastError ?? this.#bundleWatch.lastError,
      spiffeId: this.#current?.identity.spiffeId.toString(),
      lastSvidUpdate: this.#lastSvidUpdate,
      svidNotAfter: this.#current?.identity.notAfter,
      lastBundleUpdate: this.#bundles.lastUpdate,
      bundles: this.#bundles.status(),
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
        const last = [
          this.#svidWatch.lastError && `last stream error: ${this.#svidWatch.lastError}`,
          this.#lastRejection && `last refused update: ${this.#lastRejection}`,
        ]
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
    let next: TlsIdentity | undefined;
    try {
      next = servingIdentityOf(message, this.#wantedId, now);
    } catch (err) {
      this.#refuse('X509-SVID update', (err as Error).message);
    }
    if (next) {
      this.#lastSvidUpdate = now;
      const previous = this.#current?.identity;
      if (!previous || previous.certChainPem !== next.certChainPem || previous.keyPem !== next.keyPem) {
        const identity = next;
        this.#current = { identity };
        this.#logger.info(
          { spiffeId: identity.spiffeId.toString(), notAfter: identity.notAfter.toISOString() },
          previous ? 'X509-SVID rotated by the Workload API' : 'X509-SVID received from the Workload API',
        );
        this.#events.emit('change', identity);
      }
    }
    // Bundles ride along with the SVIDs; they are used until FetchX509Bundles speaks for itself.
    this.#bundles.fromX509SvidResponse(message, this.#current?.identity.spiffeId.trustDomain, now);
  }
}
