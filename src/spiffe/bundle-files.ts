/**
 * Trust bundles read from files (`--bundle TRUST_DOMAIN=FILE`), kept current as the files change.
 * A file that stops parsing leaves the last good bundle in force and says why in the log.
 */
import type { Logger } from '../observability/logger.js';
import { WatchedValue } from '../files/watched-value.js';
import { parseX509Bundle, type TrustBundleSet, type X509Bundle } from './bundle.js';
import { parseTrustDomain } from './id.js';

export interface BundleFile {
  readonly trustDomain: string;
  readonly path: string;
}

/** Parses a `TRUST_DOMAIN=FILE` argument. */
export function parseBundleFileArg(arg: string): BundleFile {
  const eq = arg.indexOf('=');
  if (eq <= 0 || eq === arg.length - 1) {
    throw new Error(`bundle must be given as TRUST_DOMAIN=FILE, got "${arg}"`);
  }
  return { trustDomain: parseTrustDomain(arg.slice(0, eq)), path: arg.slice(eq + 1) };
}

export interface BundleFileWatchOptions {
  logger: Logger;
  pollIntervalMs?: number;
}

/** Loads every bundle file into `set` (throwing if any first load fails) and follows their changes. */
export async function watchBundleFiles(set: TrustBundleSet, files: readonly BundleFile[], options: BundleFileWatchOptions): Promise<{ close(): void }> {
  const duplicate = files.find((f, i) => files.findIndex((g) => g.trustDomain === f.trustDomain) !== i);
  if (duplicate) {
    throw new Error(`trust domain ${duplicate.trustDomain} is given more than one bundle file`);
  }
  const watched: WatchedValue<X509Bundle>[] = [];
  const close = () => watched.forEach((w) => w.close());
  try {
    for (const file of files) {
      const log = options.logger.child({ trustDomain: file.trustDomain, path: file.path });
      const watchedBundle = new WatchedValue([file.path], ([text = '']) => parseX509Bundle(file.trustDomain, text), {
        pollIntervalMs: options.pollIntervalMs,
        onError: (err, during) =>
          log.error(
            { err: err.message },
            during === 'reload' ? 'trust bundle reload failed; keeping the last good bundle' : 'trust bundle change listener failed',
          ),
      });
      watched.push(watchedBundle);
      watchedBundle.onChange((next) => {
        set.set(next);
        log.info({ authorities: next.authorities.length, sequence: next.sequence }, 'trust bundle reloaded');
      });
      const first = await watchedBundle.ready().catch((err: Error) => {
        throw new Error(`cannot load trust bundle for ${file.trustDomain} from ${file.path}: ${err.message}`);
      });
      set.set(first);
      log.info({ authorities: first.authorities.length, sequence: first.sequence }, 'trust bundle loaded');
    }
  } catch (err) {
    close();
    throw err;
  }
  return { close };
}
