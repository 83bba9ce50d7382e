/**
 * The trust bundles a WorkloadApiSource keeps: every usable update replaces the whole set, so a
 * trust domain that disappears from it is no longer trusted. The bundles that ride along with
 * FetchX509SVID are used until FetchX509Bundles has delivered once (an agent may not implement
 * it); after that only FetchX509Bundles speaks for them.
 *
 * Apart from workload-api-source.ts, which follows the streams and keeps the SVID: this is the
 * rule for which bundle update wins and when one is refused, with the times the status reports.
 */
import type { Logger } from '../observability/logger.js';
import type { TrustBundleSet, X509Bundle } from './bundle.js';
import type { X509BundlesResponse, X509SvidResponse } from './workload-api.js';
import { bundlesFromWorkloadApiMap, bundlesOfX509SvidResponse } from './workload-api-messages.js';

/** Says that an update is unusable (counted, logged); the last good bundles stay. */
export type RefuseUpdate = (what: string, reason: string) => void;

export class WorkloadApiBundles {
  readonly #set: TrustBundleSet;
  readonly #logger: Logger;
  readonly #refuse: RefuseUpdate;
  #lastUpdate: Date | undefined;
  readonly #times = new Map<string, Date>();
  #bundlesStreamDelivered = false;

  constructor(set: TrustBundleSet, logger: Logger, refuse: RefuseUpdate) {
    this.#set = set;
    this.#logger = logger;
    this.#refuse = refuse;
  }

  /** When the last usable bundle update arrived (changed or not). */
  get lastUpdate(): Date | undefined {
    return this.#lastUpdate;
  }

  /** Per trusted trust domain: when its bundle last changed (appeared or got other CAs) and how many CAs it holds. */
  status(): Record<string, { updatedAt: Date; authorities: number }> {
    const bundles: Record<string, { updatedAt: Date; authorities: number }> = {};
    for (const td of this.#set.trustDomains()) {
      bundles[td] = { updatedAt: this.#times.get(td) ?? new Date(0), authorities: this.#set.getX509Bundle(td)?.authorities.length ?? 0 };
    }
    return bundles;
  }

  /** The bundles of a FetchX509SVID message, used until FetchX509Bundles speaks for itself. `own`: the served SVID's trust domain. */
  fromX509SvidResponse(message: X509SvidResponse, own: string | undefined, now: Date): void {
    if (this.#bundlesStreamDelivered) return;
    let bundles: X509Bundle[];
    try {
      bundles = bundlesOfX509SvidResponse(message);
    } catch (err) {
      this.#refuse('bundle update (with the X509-SVID)', (err as Error).message);
      return;
    }
    this.#apply(bundles, 'FetchX509SVID', own, now);
  }

  /** A FetchX509Bundles message. `own`: the served SVID's trust domain. */
  fromX509BundlesResponse(message: X509BundlesResponse, own: string | undefined, now: Date): void {
    let bundles: X509Bundle[];
    try {
      bundles = bundlesFromWorkloadApiMap(message.bundles);
    } catch (err) {
      this.#refuse('bundle update', (err as Error).message);
      return;
    }
    if (this.#apply(bundles, 'FetchX509Bundles', own, now)) this.#bundlesStreamDelivered = true;
  }

  /** Replaces the whole set when anything differs; returns false when the update was refused. */
  #apply(bundles: X509Bundle[], from: string, own: string | undefined, now: Date): boolean {
    if (bundles.length === 0) {
      this.#refuse('bundle update', `${from} sent no trust bundle at all`);
      return false;
    }
    if (own && !bundles.some((b) => b.trustDomain === own)) {
      this.#refuse('bundle update', `${from} sent no bundle for the broker's own trust domain ${own}`);
      return false;
    }
    this.#lastUpdate = now;
    const before = new Set(this.#set.trustDomains());
    const added: string[] = [];
    const changed: string[] = [];
    for (const bundle of bundles) {
      if (!before.has(bundle.trustDomain)) added.push(bundle.trustDomain);
      else if (!sameAuthorities(this.#set.getX509Bundle(bundle.trustDomain), bundle)) changed.push(bundle.trustDomain);
    }
    const removed = [...before].filter((td) => !bundles.some((b) => b.trustDomain === td));
    if (added.length + changed.length + removed.length === 0) return true;
    this.#set.replaceAll(bundles);
    for (const td of [...added, ...changed]) this.#times.set(td, now);
    for (const td of removed) this.#times.delete(td);
    this.#logger.info(
      { from, trustDomains: this.#set.trustDomains(), added: added.sort(), changed: changed.sort(), removed: removed.sort() },
      'trust bundles updated from the Workload API',
    );
    return true;
  }
}

function sameAuthorities(a: X509Bundle | undefined, b: X509Bundle): boolean {
  if (!a || a.authorities.length !== b.authorities.length) return false;
  return a.authorities.every((cert, i) => cert.der.equals(b.authorities[i]?.der ?? Buffer.alloc(0)));
}
