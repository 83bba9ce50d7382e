/**
 * Smoke test of the fault-injection infrastructure (issue 8): a private PostgreSQL cluster
 * (test/helpers/pg-cluster.ts) and real `task-broker serve` replicas on it
 * (test/helpers/serve-process.ts). A task's life runs across two replicas sharing one database
 * and KEK; the cluster survives `pg_ctl restart -m fast` with the acknowledged commits; the
 * replicas stop with exit 0; destroy() leaves no postmaster behind. (Runs dist/: build first.)
 *
 * What the brokers do across a database restart is not asserted here (issue 8's own tests).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, onTestFailed } from 'vitest';
import { queryRows } from '../helpers/db.js';
import { processAlive, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import { createServePki, randomKek, startServe, type ServeProcess } from '../helpers/serve-process.js';
import { tempDirForFile } from '../helpers/cleanup.js';
import { AUDIENCE, POLICY, taskSpec, TD, WORKER } from './fixtures.js';

/** Pids of live processes whose parent is `ppid`. */
async function childrenOf(ppid: number): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = (await readFile(`/proc/${entry}/stat`, 'utf8')).replace(/^.*\) /s, '').split(' ');
      if (Number(fields[1]) === ppid) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Pids of live processes whose command line mentions `text`. */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if ((await readFile(`/proc/${entry}/cmdline`, 'utf8')).includes(text)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

const dir = tempDirForFile('tb-faults-infra-');

describe('fault-injection infrastructure', () => {
  it('runs a task across two serve replicas on a private cluster, restarts the cluster, and cleans up', { timeout: 100_000 }, async () => {
    const t0 = Date.now();
    const timings: Record<string, number> = {};
    let last = t0;
    const mark = (phase: string) => {
      const now = Date.now();
      timings[phase] = now - last;
      last = now;
    };

    let cluster: PgCluster | undefined;
    const replicas: ServeProcess[] = [];
    onTestFailed(async () => {
      for (const [i, r] of replicas.entries()) console.error(`--- replica ${i} stdout ---\n${r.cli.stdout()}\n--- stderr ---\n${r.cli.stderr()}`);
      if (cluster) console.error(`--- PostgreSQL log (${cluster.logFile}; gone once destroyed) ---\n${await cluster.logTail(80)}`);
    });
    try {
      // The cluster and the PKI (four runs of the real CLI) are made at the same time.
      const makePki = async () => {
        const made = await createServePki(join(dir(), 'pki'), TD);
        await Promise.all([made.svid(WORKER), made.svid(AUDIENCE)]);
        return made;
      };
      const [clusterResult, pkiResult] = await Promise.allSettled([startPgCluster(), makePki()]);
      if (clusterResult.status === 'fulfilled') cluster = clusterResult.value;
      for (const r of [clusterResult, pkiResult]) if (r.status === 'rejected') throw r.reason;
      if (!cluster || pkiResult.status !== 'fulfilled') throw new Error('unreachable');
      const pki = pkiResult.value;
      const databaseUrl = await cluster.createDatabase();
      expect(databaseUrl).toMatch(new RegExp(`^postgres://postgres@127\\.0\\.0\\.1:${cluster.port}/tb_fault_`));
      mark('cluster start + createDatabase, with the pki (dev-ca init + 3 mints)');

      // Two replicas on one database share the KEK; they start (and migrate) at the same time.
      const kek = randomKek();
      replicas.push(...(await Promise.all([0, 1].map(() => startServe({ pki, databaseUrl, policyYaml: POLICY, kek })))));
      const [a, b] = replicas as [ServeProcess, ServeProcess];
      expect(a.port).not.toBe(b.port);
      for (const r of replicas) {
        expect((await r.readyz()).status).toBe(200);
        expect(await r.fdCount()).toBeGreaterThan(0);
        expect(await r.metrics()).toContain('task_broker_ready');
      }
      mark('two replicas start');

      // Create on A, issue on B, verify on A (the audience, with the presenter's certificate),
      // complete on B, verify on A again: revoked.
      const spec = taskSpec(AUDIENCE);
      const created = await (await a.client(WORKER)).createTask({ spec });
      const taskId = created.task!.taskId;
      const issued = await (await b.client(WORKER)).issueToken({ taskId });
      expect(issued.token).toBeTruthy();
      const presenterCertDer = (await pki.svid(WORKER)).certDer;
      const verified = await (await a.client(AUDIENCE)).verifyToken({ token: issued.token, presenterCertDer });
      expect(verified).toMatchObject({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID', bindingChecked: true });
      expect(verified.claims).toMatchObject({ subject: WORKER, audience: AUDIENCE, taskId });
      const completed = await (await b.client(WORKER)).completeTask(taskId, 'done');
      expect(completed.task?.state).toBe('TASK_STATE_COMPLETED');
      const afterCompletion = await (await a.client(AUDIENCE)).verifyToken({ token: issued.token, presenterCertDer });
      expect(afterCompletion.valid).toBe(false);
      mark('task lifecycle across replicas');

      // The cluster restarts (fast) and comes back with the acknowledged commits.
      const pidBefore = await cluster.postmasterPid();
      await cluster.restart('fast');
      const pidAfter = await cluster.postmasterPid();
      expect(pidAfter).toBeDefined();
      expect(pidAfter).not.toBe(pidBefore);
      expect(await cluster.isRunning()).toBe(true);
      const rows = await queryRows<{ state: string }>(databaseUrl, 'SELECT state FROM tasks WHERE task_id = $1', [taskId]);
      expect(rows).toEqual([{ state: 'COMPLETED' }]);
      mark('pg_ctl restart -m fast');

      // Both replicas stop cleanly.
      expect(await Promise.all(replicas.map((r) => r.stop()))).toEqual([0, 0]);
      for (const r of replicas) expect(processAlive(r.pid)).toBe(false);
      mark('replicas stop');

      // destroy(): no postmaster (nor any of its children) remains, and the dir is gone.
      const postmaster = pidAfter!;
      const backends = await childrenOf(postmaster);
      expect(backends.length).toBeGreaterThan(0);
      await cluster.destroy();
      await cluster.destroy(); // idempotent
      expect(processAlive(postmaster)).toBe(false);
      expect(backends.filter(processAlive)).toEqual([]);
      expect(await processesMentioning(cluster.dataDir)).toEqual([]);
      await expect(stat(cluster.dir)).rejects.toThrow(/ENOENT/);
      mark('cluster destroy');
    } finally {
      await Promise.all(replicas.map((r) => r.stop('SIGKILL')));
      await cluster?.destroy();
    }
    console.info(`fault infrastructure smoke test: ${Date.now() - t0} ms`, timings);
  });
});
