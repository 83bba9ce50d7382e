/**
 * `npm run bench`: the broker beside what it is measured against, in one command, one process
 * tree and one period of time (see bench/README.md):
 *
 *   1. a bare grpc-js mTLS echo server (the transport ceiling);
 *   2. node oidc-provider 9.13: client_credentials with tls_client_auth, certificate-bound ES256
 *      JWT access tokens, and introspection;
 *   3. a real `task-broker serve` process on PostgreSQL and on PGlite: CreateTask, IssueToken,
 *      VerifyToken, the whole flow, and IssueToken open-loop at a fraction of its measured rate.
 *
 * Every server is a child process of this one; the load comes from other child processes
 * (load.js). For each scenario: server CPU per call from /proc/PID/stat (and, on PostgreSQL,
 * the CPU of the backends that serve the broker and of the cluster's WAL writer, checkpointer
 * and background writer), peak RSS of the server, latency percentiles, errors.
 *
 * This file is one run from start to end. The pieces: scenarios.ts, options.ts (the command
 * line), targets.ts (the PKI and the servers under test), generators.ts, measure.ts (one
 * scenario), report.ts, and processes.ts (every child and every cleanup).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { closeGenerators, startGenerators } from './generators.js';
import { measure, type ScenarioResult } from './measure.js';
import { parseOptions, UsageError } from './options.js';
import { cleanUp, cleanUpOnExit, cleanups } from './processes.js';
import { packageVersion, printReport, ratios, type Machine, type Report, type Settings } from './report.js';
import { SCENARIOS, type TargetName } from './scenarios.js';
import { createPki, forkServer, startBroker, type Server } from './targets.js';

cleanUpOnExit();

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) return 0;
  const log = (line: string) => console.error(line);
  const cpus = os.cpus();
  const machine: Machine = {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    oidcProvider: packageVersion('oidc-provider'),
    loadAverageStart: os.loadavg(),
    startedAt: new Date().toISOString(),
  };
  log(`bench: load average at start ${machine.loadAverageStart.map((n) => n.toFixed(2)).join(' ')} (${machine.cpus} cores)`);
  if ((machine.loadAverageStart[0] ?? 0) > machine.cpus * 0.5) {
    log('bench: the machine is busy with other work: the figures will be lower and noisier (see the "other" column)');
  }

  const work = await mkdtemp(join(os.tmpdir(), 'tb-bench-'));
  if (options.keep) log(`bench: work directory ${work} (kept)`);
  else cleanups.push(() => rm(work, { recursive: true, force: true }));
  const results: ScenarioResult[] = [];
  try {
    log(`bench: minting the bench PKI with dev-ca (${options.connections} workload and API identities)`);
    const pki = await createPki(join(work, 'pki'), options.connections);
    const targets: TargetName[] = ['echo', 'oidc', 'broker-pg', 'broker-pglite'];
    let pgAdmin: pg.Client | undefined;
    if (options.scenarios.some((s) => s.target === 'broker-pg')) {
      const admin = new pg.Client({ connectionString: options.pgUrl, application_name: 'task-broker-bench' });
      await admin.connect();
      cleanups.push(() => admin.end());
      pgAdmin = admin;
      machine.postgres = (await admin.query<{ server_version: string }>('SHOW server_version')).rows[0]?.server_version;
    }

    for (const targetName of targets) {
      const scenarios = options.scenarios.filter((s) => s.target === targetName);
      if (scenarios.length === 0) continue;
      const mark = cleanups.length;
      let server: Server;
      switch (targetName) {
        case 'echo':
          server = await forkServer(
            './echo-server.js',
            { kind: 'echo', certPath: pki.broker.certPath, keyPath: pki.broker.keyPath, bundlePath: pki.bundlePath },
            'grpc-js echo server',
          );
          break;
        case 'oidc':
          server = await forkServer(
            './oidc-server.js',
            { kind: 'oidc', certPath: pki.broker.certPath, keyPath: pki.broker.keyPath, bundlePath: pki.bundlePath, identities: options.connections },
            `oidc-provider ${machine.oidcProvider}`,
          );
          break;
        case 'broker-pg': {
          if (!pgAdmin) throw new Error('no PostgreSQL connection');
          const admin = pgAdmin;
          const database = `tb_bench_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
          await admin.query(`CREATE DATABASE ${database}`);
          cleanups.push(async () => void (await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)));
          const url = new URL(options.pgUrl);
          url.pathname = `/${database}`;
          server = await startBroker(work, pki, { kind: 'pg', databaseUrl: url.toString(), database }, options.serveArgs);
          break;
        }
        case 'broker-pglite':
          server = await startBroker(work, pki, { kind: 'pglite', dataDir: join(work, 'pglite') }, options.serveArgs);
          break;
      }
      cleanups.push(() => server.stop());
      log(`bench: ${server.describe} on ${server.address} (pid ${server.pid})`);
      const kind = targetName === 'broker-pg' || targetName === 'broker-pglite' ? 'broker' : targetName;
      const gens = await startGenerators(options, { kind, address: server.address, bundlePath: pki.bundlePath }, pki);

      for (const scenario of scenarios) {
        let targetRate: number | undefined;
        if (scenario.mode === 'open') {
          const closedId = scenario.id.replace(/-open$/, '');
          let closed = results.find((r) => r.id === closedId);
          if (options.openRate === undefined && !closed) {
            const calibration = SCENARIOS.find((s) => s.id === closedId);
            if (!calibration) throw new Error(`no closed-loop scenario ${closedId}`);
            log(`bench: ${calibration.id} (to set the open-loop rate)`);
            closed = await measure(calibration, options, server, gens, pgAdmin, log);
            results.push(closed);
          }
          targetRate = options.openRate ?? (closed?.ratePerSec ?? 0) * options.openFraction;
          if (!(targetRate >= 1)) {
            log(`bench: ${scenario.id} skipped: no closed-loop rate to start from`);
            continue;
          }
        }
        log(`bench: ${scenario.id}`);
        results.push(await measure(scenario, options, server, gens, pgAdmin, log, targetRate));
      }

      await closeGenerators(gens);
      // Stop the server (and drop its database) now, not at the end: the next target runs alone.
      while (cleanups.length > mark) await cleanups.pop()?.();
    }
  } finally {
    await cleanUp();
  }
  machine.loadAverageEnd = os.loadavg();
  const computed = ratios(results);
  const settings: Settings = {
    seconds: options.seconds,
    warmup: options.warmup,
    inflight: options.inflight,
    connections: options.connections,
    generators: options.generators,
    openFraction: options.openFraction,
    ...(options.openRate !== undefined ? { openRate: options.openRate } : {}),
    serveArgs: options.serveArgs,
  };
  if (options.json) {
    console.log(JSON.stringify({ machine, settings, results, ratios: computed } satisfies Report, null, 2));
    return 0;
  }
  printReport({ machine, settings, results, ratios: computed });
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  async (err: unknown) => {
    await cleanUp();
    if (err instanceof UsageError) console.error(`${err.message}\n(npm run bench -- --help for the options)`);
    else console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
