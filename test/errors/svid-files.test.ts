/**
 * The broker's SVID files (`serve --svid-cert/--svid-key`, the SDK's fileX509Source): a key that
 * is not the certificate's, or files given the wrong way round, are refused in one line naming
 * the files, at load and on reload (where the last good SVID stays in force).
 */
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mintX509Svid, privateKeyPem } from '../../src/devca/certificates.js';
import { FileX509SvidSource } from '../../src/spiffe/file-x509-source.js';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { capturedLogger } from '../helpers/logs.js';
import { pemOf, trustDomainPki } from '../helpers/pki.js';

const cleanups = cleanupsAfterEach();
const BROKER_ID = 'spiffe://a.test/task-broker';

async function svidFiles() {
  const dir = await cleanups.tempDir('tb-svid-files-');
  const a = await trustDomainPki('a.test');
  const svid = await pemOf(await mintX509Svid(a.root, BROKER_ID));
  const other = await privateKeyPem((await mintX509Svid(a.root, BROKER_ID)).keys);
  const paths = { cert: join(dir, 'svid.pem'), key: join(dir, 'svid.key'), otherKey: join(dir, 'other.key') };
  await Promise.all([writeFile(paths.cert, svid.certChainPem), writeFile(paths.key, svid.keyPem), writeFile(paths.otherKey, other)]);
  return { dir, svid, paths };
}

/** Resolves once `lines` holds one for which `match` holds (polled: the file watcher has no completion event to await). */
async function logLine(lines: () => Array<Record<string, unknown>>, match: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const found = lines().find(match);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`log line not seen; lines: ${JSON.stringify(lines())}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('SVID files that cannot be used', () => {
  it('a key that is not the certificate’s, at load: both files and what to give', async () => {
    const { paths } = await svidFiles();
    await expect(FileX509SvidSource.load(paths.cert, paths.otherKey, { logger: capturedLogger().logger })).rejects.toThrow(
      `SVID key ${paths.otherKey} does not match the certificate in ${paths.cert} (its public key differs): give the private key that was issued with this certificate`,
    );
  });

  it('the certificate and key files swapped', async () => {
    const { paths } = await svidFiles();
    await expect(FileX509SvidSource.load(paths.key, paths.cert, { logger: capturedLogger().logger })).rejects.toThrow(
      new RegExp(
        `^SVID certificate ${paths.key.replace(/[.]/g, '\\.')} is not a PEM certificate chain \\(.*\\) \\(it holds a private key: are the certificate and key files swapped\\?\\): give the X509-SVID certificate, leaf first$`,
      ),
    );
  });

  it('a key that is not a key', async () => {
    const { paths } = await svidFiles();
    await writeFile(paths.otherKey, 'not a key\n');
    await expect(FileX509SvidSource.load(paths.cert, paths.otherKey, { logger: capturedLogger().logger })).rejects.toThrow(
      new RegExp(
        `^SVID key ${paths.otherKey.replace(/[.]/g, '\\.')} is not a readable private key \\(.+\\): give the PEM private key \\(PKCS#8, unencrypted\\)`,
      ),
    );
  });

  it('a key replaced by another on reload: logged in one line, the last good SVID stays', async () => {
    const { paths, svid } = await svidFiles();
    const { logger, lines } = capturedLogger();
    const source = await FileX509SvidSource.load(paths.cert, paths.key, { logger, pollIntervalMs: 50 });
    cleanups.push(() => source.close());
    await rename(paths.otherKey, paths.key);
    const failure = await logLine(lines, (l) => l.level === 'error');
    expect(failure.msg).toBe(
      `server SVID reload failed; keeping the last good SVID: SVID key ${paths.key} does not match the certificate in ${paths.cert} (its public key differs): give the private key that was issued with this certificate`,
    );
    expect(source.current().keyPem).toBe(svid.keyPem);
  });
});
