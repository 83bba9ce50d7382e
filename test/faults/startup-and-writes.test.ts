/**
 * Issue 8, closed defaults at start and a database that answers but refuses writes, against real
 * `task-broker serve` processes on PostgreSQL:
 *
 *   - file mode with bundles that do not cover the broker's own trust domain: serve refuses to
 *     start (instead of reporting ready and refusing its own workloads);
 *   - INSERT on the audit table revoked from the broker's role: calls fail UNAVAILABLE saying
 *     why, /readyz turns 503 after a run of failed writes, and ready again (by its write probe)
 *     once the privilege is back. (Runs dist/: build first.)
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { adminQuery, pgUrl, queryRows, uniqueName } from '../helpers/db.js';
import { createServePki, randomKek, startServe, type ServePki } from '../helpers/serve-process.js';
import { sample } from '../ops/helpers.js';
import { AUDIENCE, POLICY, taskSpec, TD, until, WORKER } from './fixtures.js';

let dir: string;
let pki: ServePki;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-faults-start-'));
  pki = await createServePki(join(dir, 'pki'), TD);
  await pki.svid(WORKER);
}, 180_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('closed defaults at start', () => {
  it('serve refuses to start when no bundle covers its own trust domain, naming it', async () => {
    const other = await createServePki(join(dir, 'other-pki'), 'example.com');
    const res = await runCli(['serve', '--migrate', '--http-listen', 'off', '--listen', '127.0.0.1:0'], {
      env: {
        TASK_BROKER_SVID_CERT: join(pki.dir, 'broker.pem'),
        TASK_BROKER_SVID_KEY: join(pki.dir, 'broker.key'),
        TASK_BROKER_BUNDLES: `example.com=${other.bundlePath}`,
        TASK_BROKER_KEK: randomKek(),
        TASK_BROKER_DATA_DIR: join(dir, 'data'),
        TASK_BROKER_POLICY: '',
        TASK_BROKER_DATABASE_URL: '',
      },
    });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/no trust bundle covers the broker's own trust domain "example\.org"/);
    expect(res.stderr).toMatch(/--bundle example\.org=FILE/);
    expect(res.stdout).not.toContain('task-broker listening');
  });
});

describe('writes refused by the database', () => {
  it(
    'INSERT on the audit table revoked: UNAVAILABLE with the reason, not ready after a run of failures, ready again once it is granted back',
    { timeout: 180_000 },
    async () => {
      const database = uniqueName('tb_writes');
      const role = uniqueName('tb_app');
      await adminQuery(`CREATE DATABASE ${database}`);
      await adminQuery(`CREATE ROLE ${role} LOGIN`);
      try {
        // Migrated by the owner (the admin); served by a role with data privileges only.
        const migrated = await runCli(['migrate', '--database-url', pgUrl(database)]);
        expect(migrated.code, migrated.stderr).toBe(0);
        await adminQuery(`GRANT USAGE ON SCHEMA public TO ${role}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${role};`, database);
        const replica = await startServe({ pki, databaseUrl: pgUrl(database, role), policyYaml: POLICY, migrate: false });
        try {
          const worker = await replica.client(WORKER);
          expect((await worker.createTask({ spec: taskSpec(AUDIENCE) })).task?.state).toBe('TASK_STATE_ACTIVE');
          expect((await replica.readyz()).status).toBe(200);

          await adminQuery(`REVOKE INSERT ON audit_events FROM ${role}`, database);
          for (let i = 0; i < 6; i++) {
            const err = await worker.createTask({ spec: taskSpec(AUDIENCE) }).catch((e: grpc.ServiceError) => e);
            expect(err).toMatchObject({
              code: grpc.status.UNAVAILABLE,
              details: expect.stringMatching(/database unavailable: the database refused the broker's role a privilege it needs.*nothing was changed/),
            });
          }
          await until(async () => (await replica.readyz()).status === 503, 15_000, 'not ready after the failed writes');
          const report = await replica.readyz();
          expect(report.body).toMatchObject({
            checks: {
              writes: { ok: false, reason: expect.stringMatching(/write transactions failed in a row.*privilege.*write probe fails too/) },
              database: { ok: true },
            },
          });
          expect(sample(await replica.metrics(), 'task_broker_db_consecutive_write_failures')).toBeGreaterThanOrEqual(5);

          // Nothing was written by the refused calls: the tasks table holds the first task only.
          expect((await queryRows<{ n: string }>(pgUrl(database), 'select count(*) as n from tasks'))[0]?.n).toBe('1');
          await adminQuery(`GRANT INSERT ON audit_events TO ${role}`, database);
          await until(async () => (await replica.readyz()).status === 200, 30_000, 'ready again once the privilege is back');
          expect((await worker.createTask({ spec: taskSpec(AUDIENCE) })).task?.state).toBe('TASK_STATE_ACTIVE');
          expect(sample(await replica.metrics(), 'task_broker_db_consecutive_write_failures')).toBe(0);
        } finally {
          expect(await replica.stop()).toBe(0);
        }
      } finally {
        await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
        await adminQuery(`DROP ROLE IF EXISTS ${role}`);
      }
    },
  );
});
