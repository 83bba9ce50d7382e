/**
 * Trust bundles read from files (`--bundle TRUST_DOMAIN=FILE`), kept current as the files change.
 * A file that stops parsing leaves the last good bundle in force and says why in the log.
 */
import type { Logger } from '../observability/logger.js';
import { WatchedFiles } from '../files/watched-files.js';
import { parseX509Bundle, type TrustBundleSet } from './bundle.js';
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
  const watchers: WatchedFiles[] = [];
  try {
    for (const file of files) {
      const log = options.logger.child({ trustDomain: file.trustDomain, path: file.path });
      let loaded = false;
      const watcher = new WatchedFiles(
        [file.path],
        ([content]) => {
          const bundle = parseX509Bundle(file.trustDomain, (content ?? Buffer.alloc(0)).toString('utf8'));
          set.set(bundle);
          log.info({ authorities: bundle.authorities.length, sequence: bundle.sequence }, loaded ? 'trust bundle reloaded' : 'trust bundle loaded');
          loaded = true;
        },
        {
          pollIntervalMs: options.pollIntervalMs,
          onError: (err) => log.error({ err: err.message }, 'trust bundle reload failed; keeping the last good bundle'),
        },
      );
      watchers.push(watcher);
      await watcher.start().catch((err: Error) => {
        throw new Error(`cannot load trust bundle for ${file.trustDomain} from ${file.path}: ${err.message}`);
      });
    }
  } catch (err) {
    for (const w of watchers) w.close();
    throw err;
  }
  return { close: () => watchers.forEach((w) => w.close()) };
}
