// What both example runners share (`npm run example`, `npm run example:mcp`): a throwaway trust
// domain from the broker's own dev CA (`task-broker dev-ca`), `task-broker serve` on embedded
// PGlite with the given policy, and child processes whose output is echoed with a prefix. Not an
// SDK example itself: the services the runners start are.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const BIN = fileURLToPath(new URL('../bin/task-broker.js', import.meta.url));

/** The task-broker CLI, awaited: resolves with {stdout, stderr}, rejects on a non-zero exit. */
export const cli = (...args) => promisify(execFile)(process.execPath, [BIN, ...args]);

/** A line of JSON (a log line, a ready line), or undefined. */
export const json = (line) => {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
};

/**
 * Mints `identities` ([SPIFFE ID, file name] pairs; the broker's included) in a new trust domain,
 * writes `policy`, starts the broker and resolves once it listens. `start` runs a child whose
 * output is echoed as `[name] line` (JSON log lines only with EXAMPLE_VERBOSE) and resolves with
 * the first line `accept` returns a value for; `close` stops every child and removes the files.
 */
export async function startLocalBroker({ trustDomain, brokerId, identities, policy, prefix }) {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const children = [];
  const start = (name, argv, env, accept) => {
    const child = spawn(process.execPath, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    return new Promise((resolve, reject) => {
      for (const stream of [child.stdout, child.stderr]) {
        createInterface({ input: stream }).on('line', (line) => {
          const value = accept(line);
          if (value !== undefined) resolve(value);
          if (process.env.EXAMPLE_VERBOSE || !line.startsWith('{')) console.log(`[${name}] ${line}`);
        });
      }
      child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready`)));
    });
  };
  const close = async () => {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await cli('dev-ca', 'init', '--dir', dir, '--trust-domain', trustDomain);
    for (const [id, name] of [[brokerId, 'broker'], ...identities]) await cli('dev-ca', 'mint', '--dir', dir, '--spiffe-id', id, '--name', name);
    await writeFile(join(dir, 'policy.yaml'), policy);
    const bundle = join(dir, 'ca.pem');
    const port = await start(
      'broker',
      [
        BIN,
        'serve',
        '--listen',
        '127.0.0.1:0',
        '--http-listen',
        'off',
        '--svid-cert',
        join(dir, 'broker.pem'),
        '--svid-key',
        join(dir, 'broker.key'),
        '--bundle',
        `${trustDomain}=${bundle}`,
        '--policy',
        join(dir, 'policy.yaml'),
        '--data-dir',
        join(dir, 'data'),
        '--migrate',
      ],
      { TASK_BROKER_KEK: randomBytes(32).toString('base64') },
      (line) => (json(line)?.msg === 'task-broker listening' ? json(line).port : undefined),
    );
    const address = `127.0.0.1:${port}`;
    console.log(`broker listening on ${address} (PGlite in ${join(dir, 'data')})`);
    return {
      dir,
      address,
      bundle,
      /** The SVID files of `name`, and the bundle, as the example services read them from their environment. */
      files: (name) => ({ SVID_CERT: join(dir, `${name}.pem`), SVID_KEY: join(dir, `${name}.key`), BUNDLE: bundle }),
      start,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
