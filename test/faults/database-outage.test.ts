/**
 * Issue 8, database faults, against three real `task-broker serve` replicas on a private
 * PostgreSQL cluster under load (a task's life in loops on every replica):
 *
 *   - PostgreSQL restarted (`pg_ctl restart -m fast`) and then stopped for 10 s;
 *   - no replica exits; every failed call is UNAVAILABLE or ABORTED (never INTERNAL, never a
 *     hang), and says why;
 *   - /readyz turns 503 during the outage and 200 after it;
 *   - each replica serves again within 2 s of the database accepting connections;
 *   - every acknowledged effect is in the database with its audit event.
 *
 * A replica started while the database is down waits for it (--database-wait) and serves once
 * it comes up. (Runs dist/: build first.)
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { queryRows } from '../helpers/db.js';
import { processAlive, startPgCluster, type PgCluster } from '../helpers/pg-cluster.js';
import type { RunningCli } from '../helpers/cli.js';
import { createServePki, randomKek, startServe, type ServePki, type ServeProcess } from '../helpers/serve-process.js';
import { AUDIENCE, codeCounts, POLICY, startTaskLoad, taskSpec, TD, type CallOutcome, until, WORKER } from './fixtures.js';

const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.ABORTED]);

let dir: string;
let cluster: PgCluster;
let pki: ServePki;
let databaseUrl: string;
const replicas: ServeProcess[] = [];
/** Every replica on the database shares the key-encryption key of its signing keys. */
const kek = randomKek();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-faults-db-'));
  [cluster, pki] = await Promise.all([
    startPgCluster(),
    (async () => {
      const made = await createServePki(join(dir, 'pki'), TD);
      await Promise.all([made.svid(WORKER), made.svid(AUDIENCE)]);
      return made;
    })(),
  ]);
  databaseUrl = await cluster.createDatabase();
}, 180_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.stop('SIGKILL')));
  await cluster?.destroy();
  await rm(dir, { recursive: true, force: true });
});

describe('database restart and outage under load', () => {
  it('three replicas survive a restart and a 10 s stop: retryable codes only, back within 2 s, nothing acknowledged lost', { timeout: 240_000 }, async () => {
    onTestFailed(async () => {
      for (const [i, r] of replicas.entries())
        console.error(`--- replica ${i} stdout (tail) ---\n${r.cli.stdout().slice(-6000)}\n--- stderr ---\n${r.cli.stderr().slice(-3000)}`);
      console.error(`--- PostgreSQL log ---\n${await cluster.logTail(60)}`);
    });
    replicas.push(...(await Promise.all([0, 1, 2].map(() => startServe({ pki, databaseUrl, policyYaml: POLICY, kek })))));
    const clients = await Promise.all(replicas.map((r) => r.client(WORKER)));
    const load = startTaskLoad(clients, AUDIENCE, { loopsPerClient: 3, deadlineMs: 15_000 });
    const figures: Record<string, unknown> = {};
    try {
      // Some load first, then a fast restart while calls are in flight.
      await until(() => load.outcomes.filter((o) => o.code === grpc.status.OK).length >= 60, 60_000, 'load warm-up');
      const restartAt = Date.now() - load.startedAt;
      await cluster.restart('fast');
      const backAfterRestart = Date.now() - load.startedAt;
      figures.restartBackWithinMs = await until(
        () => load.outcomes.some((o) => o.code === grpc.status.OK && o.at >= backAfterRestart),
        30_000,
        'service after the restart',
      );

      // Stopped for 10 s: every call fails with a retryable code, at once; /readyz says 503.
      await cluster.stop('fast');
      const stoppedAt = Date.now() - load.startedAt;
      const notReady = await Promise.all(replicas.map((r) => until(async () => (await r.readyz()).status === 503, 15_000, 'readyz 503 during the outage')));
      figures.readyz503WithinMs = Math.max(...notReady);
      await new Promise((r) => setTimeout(r, 10_000 - Math.min(10_000, Date.now() - load.startedAt - stoppedAt)));
      const duringOutage = load.outcomes.filter((o) => o.at > stoppedAt + 500);
      expect(duringOutage.length).toBeGreaterThan(20);
      expect(duringOutage.filter((o) => o.code === grpc.status.OK)).toEqual([]);
      figures.outageCallsP99Ms = [...duringOutage.map((o) => o.durationMs)].sort((a, b) => a - b)[Math.floor(duringOutage.length * 0.99)];

      // Back: each replica serves within 2 s of the database accepting connections.
      await cluster.start();
      const upAt = Date.now();
      const perReplica = await Promise.all(
        replicas.map((_, i) =>
          until(
            () => load.outcomes.some((o) => o.replica === i && o.code === grpc.status.OK && o.at + load.startedAt >= upAt),
            10_000,
            `replica ${i} serving again`,
          ),
        ),
      );
      figures.resumeAfterDatabaseUpMs = perReplica;
      for (const ms of perReplica) expect(ms).toBeLessThan(2_000);
      await Promise.all(replicas.map((r) => until(async () => (await r.readyz()).status === 200, 15_000, 'readyz 200 after the outage')));
      figures.restartAtMs = restartAt;
    } finally {
      await load.stop();
    }

    // No replica exited.
    for (const r of replicas) expect(processAlive(r.pid)).toBe(true);
    // Failed calls: retryable codes only, each with a reason.
    const failed = load.outcomes.filter((o) => o.code !== grpc.status.OK);
    figures.calls = codeCounts(load.outcomes);
    expect(failed.length).toBeGreaterThan(0);
    const unexpected = failed.filter((o) => !RETRYABLE.has(o.code));
    expect(unexpected.slice(0, 5)).toEqual([]);
    for (const o of failed) expect(o.details).toMatch(/database|overloaded|unavailable/i);

    // Every acknowledged effect is in the database, with its audit event.
    const ok = (method: CallOutcome['method']) => load.outcomes.filter((o) => o.method === method && o.code === grpc.status.OK);
    const created = ok('CreateTask').map((o) => o.taskId!);
    const tasks = new Set(
      (await queryRows<{ task_id: string }>(databaseUrl, 'select task_id from tasks where task_id = any($1)', [created])).map((r) => r.task_id),
    );
    expect(created.filter((id) => !tasks.has(id))).toEqual([]);
    const createdEvents = new Set(
      (
        await queryRows<{ task_id: string }>(databaseUrl, "select task_id from audit_events where event_type = 'task.created' and task_id = any($1)", [created])
      ).map((r) => r.task_id),
    );
    expect(created.filter((id) => !createdEvents.has(id))).toEqual([]);
    const tokenIds = ok('IssueToken').map((o) => o.tokenId!);
    const tokens = new Set((await queryRows<{ jti: string }>(databaseUrl, 'select jti from tokens where jti = any($1)', [tokenIds])).map((r) => r.jti));
    expect(tokenIds.filter((id) => !tokens.has(id))).toEqual([]);
    const issuedEvents = new Set(
      (
        await queryRows<{ token_id: string }>(
          databaseUrl,
          "select details->>'token_id' as token_id from audit_events where event_type = 'token.issued' and details->>'token_id' = any($1)",
          [tokenIds],
        )
      ).map((r) => r.token_id),
    );
    expect(tokenIds.filter((id) => !issuedEvents.has(id))).toEqual([]);
    const completed = ok('CompleteTask').map((o) => o.taskId!);
    const completedRows = await queryRows<{ task_id: string; state: string; events: string }>(
      databaseUrl,
      "select t.task_id, t.state, (select count(*) from audit_events e where e.task_id = t.task_id and e.event_type = 'task.completed') as events from tasks t where t.task_id = any($1)",
      [completed],
    );
    expect(completedRows.filter((r) => r.state !== 'COMPLETED' || Number(r.events) !== 1)).toEqual([]);
    expect(completedRows).toHaveLength(completed.length);
    // The replicas still serve and stop cleanly.
    const after = await clients[0]!.createTask({ spec: taskSpec(AUDIENCE) });
    expect(after.task?.state).toBe('TASK_STATE_ACTIVE');
    figures.acknowledged = { created: created.length, issued: tokenIds.length, completed: completed.length };
    console.info('database outage figures', JSON.stringify(figures));
    expect(await Promise.all(replicas.splice(0).map((r) => r.stop()))).toEqual([0, 0, 0]);
  });

  it('a replica started while the database is down waits for it with backoff and serves once it is up', { timeout: 120_000 }, async () => {
    await cluster.stop('fast');
    let spawned: RunningCli | undefined;
    const starting = startServe({
      pki,
      databaseUrl,
      policyYaml: POLICY,
      kek,
      env: { TASK_BROKER_DATABASE_WAIT: '90s' },
      startTimeoutMs: 100_000,
      onSpawn: (c) => (spawned = c),
    });
    starting.catch(() => undefined);
    // Event-driven: the second failed attempt is logged with its backoff, and the process is still there.
    await until(() => spawned !== undefined, 10_000, 'spawned');
    const waiting = await spawned!.waitForLog((l) => l.msg === 'database not reachable yet; retrying' && Number(l.attempt) >= 2, 60_000);
    expect(waiting).toMatchObject({ level: 'warn', retryInMs: expect.any(Number) });
    await cluster.start();
    const replica = await starting;
    replicas.push(replica);
    const created = await (await replica.client(WORKER)).createTask({ spec: taskSpec(AUDIENCE) });
    expect(created.task?.state).toBe('TASK_STATE_ACTIVE');
    expect((await replica.readyz()).status).toBe(200);
    expect(await replica.stop()).toBe(0);
    replicas.splice(0);
  });

  it('with --database-wait 0s a replica whose database is down exits 1 at once, saying why', { timeout: 60_000 }, async () => {
    await cluster.stop('fast');
    try {
      const failed = await startServe({ pki, databaseUrl, policyYaml: POLICY, kek, env: { TASK_BROKER_DATABASE_WAIT: '0s' } }).catch(
        (err: unknown) => err as Error,
      );
      expect(failed).toBeInstanceOf(Error);
      expect((failed as Error).message).toMatch(/cannot reach PostgreSQL/);
    } finally {
      await cluster.start();
    }
  });
});
