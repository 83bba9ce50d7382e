/**
 * The warnings a WorkloadApiSource gives while the agent is gone: the SVID stream has been down
 * for `staleWarningMs`, the SVID being served is within `expiryWarningFraction` of its lifetime
 * of expiring, and (an error) it has expired. Each is logged once per outage or per SVID, not on
 * every check.
 *
 * Apart from workload-api-source.ts so that the source reads as what it serves; this is only
 * what it says about it, on a timer.
 */
import type { Logger } from '../observability/logger.js';
import type { StreamWatch } from './workload-api-stream.js';
import type { TlsIdentity } from './x509-source.js';

/** The SVID being served. Compared by reference: a new one is a new object. */
export interface ServedSvid {
  identity: TlsIdentity;
}

export interface WatchdogOptions {
  staleWarningMs: number;
  expiryWarningFraction: number;
}

export class WorkloadApiWatchdog {
  readonly #logger: Logger;
  readonly #staleWarningMs: number;
  readonly #expiryWarningFraction: number;
  #warned = { stale: false, expiringFor: undefined as ServedSvid | undefined, expiredFor: undefined as ServedSvid | undefined };

  constructor(logger: Logger, options: WatchdogOptions) {
    this.#logger = logger;
    this.#staleWarningMs = options.staleWarningMs;
    this.#expiryWarningFraction = options.expiryWarningFraction;
  }

  /** The SVID stream delivered: the next outage is warned about again. */
  delivered(): void {
    this.#warned.stale = false;
  }

  /** Logs what is due at `now` (ms): `disconnectedSince` is when the SVID stream went down, if it is down. */
  check(now: number, disconnectedSince: Date | undefined, current: ServedSvid | undefined, svidWatch: StreamWatch): void {
    if (disconnectedSince && !this.#warned.stale && now - disconnectedSince.getTime() >= this.#staleWarningMs) {
      this.#warned.stale = true;
      this.#logger.warn(
        {
          since: disconnectedSince.toISOString(),
          lastError: svidWatch.lastError,
          svidNotAfter: current?.identity.notAfter.toISOString(),
        },
        current ? 'no updates from the Workload API for a while; serving with the last SVID until it expires' : 'still no SVID from the Workload API',
      );
    }
    if (!current) return;
    const notAfter = current.identity.notAfter.getTime();
    const lifetime = notAfter - current.identity.notBefore.getTime();
    if (now >= notAfter) {
      if (this.#warned.expiredFor !== current) {
        this.#warned.expiredFor = current;
        this.#logger.error(
          { spiffeId: current.identity.spiffeId.toString(), notAfter: current.identity.notAfter.toISOString(), lastError: svidWatch.lastError },
          'the SVID has expired and the Workload API sent no new one; not ready',
        );
      }
    } else if (notAfter - now <= lifetime * this.#expiryWarningFraction && this.#warned.expiringFor !== current) {
      this.#warned.expiringFor = current;
      this.#logger.warn(
        {
          spiffeId: current.identity.spiffeId.toString(),
          notAfter: current.identity.notAfter.toISOString(),
          remainingMs: notAfter - now,
          connected: svidWatch.connected,
        },
        'the SVID expires soon and the Workload API has not rotated it',
      );
    }
  }
}
