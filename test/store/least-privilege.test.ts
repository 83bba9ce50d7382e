/**
 * Least privilege on a real PostgreSQL server: the schema's owner runs `task-broker migrate`,
 * and `task-broker serve` (without --migrate) runs as a role that may only read and write rows
 * of the broker's tables. A new database and two new roles per run, dropped afterwards. The
 * grants are the ones an operator is told to run; they are listed once, below.
 * Runs the real binary (dist/: build first).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/client/admin-client.js';
import { BrokerClient } from '../../src/client/broker-client.js';
import { openStore } from '../../src/store/database.js';
import { loadMigrations } from '../../src/store/migrate.js';
import { cliTimeout, runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { adminQuery, pgUrl, uniqueName } from '../helpers/db.js';
import { devCaServeEnv, devCaSvid } from '../helpers/dev-ca-files.js';

const TD = 'example.org';
const BROKER_ID = `spiffe://${TD}/task-broker`;
const WORKER_ID = `spiffe://${TD}/ns/demo/sa/worker`;
const API_ID = `spiffe://${TD}/ns/demo/sa/api`;
const ADMIN_ID = `spiffe://${TD}/ns/platform/sa/admin`;

const POLICY = `
version: 1
admins: [${ADMIN_ID}]
rules:
  - name: demo
    callers: { spiffe_ids: [${WORKER_ID}] }
    actions: ["report.read"]
    audiences: [${API_ID}]
    scopes: ["reports:read"]
`;

const database = uniqueName('tb_lp');
const owner = `${database}_owner`;
const app = `${database}_app`;

/** Once, as a superuser (or a role with CREATEROLE and CREATEDB): the two roles and the database. */
const AS_SUPERUSER = [
  `CREATE ROLE ${owner} LOGIN`,
  `CREATE ROLE ${app} LOGIN`,
  `CREATE DATABASE ${database} OWNER ${owner}`,
  `REVOKE ALL ON DATABASE ${database} FROM PUBLIC`,
  `GRANT CONNECT ON DATABASE ${database} TO ${app}`,
];

/** Once, as the owner, before the first `task-broker migrate`: every table a migration creates is readable and writable by the app role. */
const AS_OWNER_BEFORE_MIGRATING = [
  // The default since PostgreSQL 15; on older servers everyone may create in public.
  `REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
  `GRANT USAGE ON SCHEMA public TO ${app}`,
  `ALTER DEFAULT PRIVILEGES FOR ROLE ${owner} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${app}`,
];

/** Once, as the owner, after the first `task-broker migrate`: the migration record is read-only and the audit trail append-only for the broker. */
const AS_OWNER_AFTER_FIRST_MIGRATE = [`REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM ${app}`, `REVOKE UPDATE, DELETE ON audit_events FROM ${app}`];

/** What the app role may do, table by table, after the statements above. */
const APP_PRIVILEGES: Record<string, string[]> = {
  audit_chains: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  audit_events: ['INSERT', 'SELECT'],
  broker_instance: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  revocation_log_head: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  revocations: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  schema_migrations: ['SELECT'],
  signing_keys: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  task_results: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  tasks: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  token_use_reports: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
  tokens: ['DELETE', 'INSERT', 'SELECT', 'UPDATE'],
};

/** Runs `statements` on the test database as `role` (each in its own statement, stopping at the first error). */
async function runAs(role: string, statements: string[]): Promise<void> {
  const client = new pg.Client({ connectionString: pgUrl(database, role) });
  await client.connect();
  try {
    for (const statement of statements) await client.query(statement);
  } finally {
    await client.end();
  }
}

/** One query on the test database as `role`. */
async function queryAs<R extends pg.QueryResultRow>(role: string, text: string): Promise<R[]> {
  const client = new pg.Client({ connectionString: pgUrl(database, role) });
  await client.connect();
  try {
    return (await client.query<R>(text)).rows;
  } finally {
    await client.end();
  }
}

let dir: string;
let pki: string;
let kek: string;
let created = false;
let broker: RunningCli | undefined;
const clients: Array<{ close(): void }> = [];

/** `task-broker serve` on PostgreSQL as `role`, configured as a Deployment would be (environment variables). */
function serveEnv(role: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return devCaServeEnv(pki, TD, {
    TASK_BROKER_DATABASE_URL: pgUrl(database, role),
    TASK_BROKER_DATA_DIR: join(dir, 'unused-pglite'),
    TASK_BROKER_MIGRATE: '',
    TASK_BROKER_POLICY: join(dir, 'policy.yaml'),
    TASK_BROKER_KEK: kek,
    TASK_BROKER_LOG_LEVEL: 'info',
    ...extra,
  });
}

// Steps: the dev-ca init, the mints (in parallel).
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-least-privilege-'));
  pki = join(dir, 'pki');
  kek = randomBytes(32).toString('base64');
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  const init = await runCli(['dev-ca', 'init', '--dir', pki, '--trust-domain', TD]);
  expect(init.code, init.stderr).toBe(0);
  const mints = await Promise.all(
    Object.entries({ broker: BROKER_ID, worker: WORKER_ID, api: API_ID, admin: ADMIN_ID }).map(([name, id]) =>
      runCli(['dev-ca', 'mint', '--dir', pki, '--spiffe-id', id, '--name', name]),
    ),
  );
  for (const m of mints) expect(m.code, m.stderr).toBe(0);

  created = true;
  for (const statement of AS_SUPERUSER) await adminQuery(statement);
  await runAs(owner, AS_OWNER_BEFORE_MIGRATING);
}, cliTimeout(2));

afterAll(async () => {
  for (const c of clients) c.close();
  if (broker && broker.child.exitCode === null && broker.child.signalCode === null) {
    broker.child.kill('SIGKILL');
    await broker.exited;
  }
  if (created) {
    await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await adminQuery(`DROP ROLE IF EXISTS ${app}`);
    await adminQuery(`DROP ROLE IF EXISTS ${owner}`);
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('serve as a role that may only read and write rows', () => {
  it('the owner migrates; the app role can read the migration status but not migrate', { timeout: cliTimeout(3) }, async () => {
    const versions = (await loadMigrations()).map((m) => m.version);

    // Before any migration: the app role reads the status without creating anything.
    const before = await runCli(['migrate', '--status', '--database-url', pgUrl(database, app)]);
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toContain(versions.map((v) => `pending  ${v}`).join('\n'));

    const migrated = await runCli(['migrate', '--database-url', pgUrl(database, owner)]);
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toContain(versions.map((v) => `applied  ${v}`).join('\n'));
    await runAs(owner, AS_OWNER_AFTER_FIRST_MIGRATE);

    const after = await runCli(['migrate', '--status', '--database-url', pgUrl(database, app)]);
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toContain(versions.map((v) => `applied  ${v}`).join('\n'));
    expect(after.stdout).not.toContain('pending');
  });

  it('the app role has exactly the documented privileges: no DDL, no temporary tables, no rewriting the audit trail or the migration record', async () => {
    const grants = await queryAs<{ table_name: string; privilege_type: string }>(
      owner,
      `SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = '${app}' ORDER BY table_name, privilege_type`,
    );
    const byTable: Record<string, string[]> = {};
    for (const g of grants) (byTable[g.table_name] ??= []).push(g.privilege_type);
    expect(byTable).toEqual(APP_PRIVILEGES);
    const [roleRow] = await queryAs<{ rolsuper: boolean; rolcreatedb: boolean; rolcreaterole: boolean; rolbypassrls: boolean }>(
      owner,
      `SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = '${app}'`,
    );
    expect(roleRow).toEqual({ rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolbypassrls: false });

    // Negative controls: each of these needs a privilege the app role must not have.
    const refused: Array<[string, RegExp]> = [
      ['CREATE TABLE lp_probe (x int)', /permission denied for schema public/],
      ['CREATE TEMPORARY TABLE lp_probe (x int)', /permission denied to create temporary tables/],
      ['ALTER TABLE tasks ADD COLUMN lp_probe int', /must be owner of table tasks/],
      ['DROP TABLE tokens', /must be owner of table tokens/],
      ["UPDATE audit_events SET details = '{}'::jsonb", /permission denied for table audit_events/],
      ['DELETE FROM audit_events', /permission denied for table audit_events/],
      ["INSERT INTO schema_migrations (version, checksum) VALUES ('9999_fake', 'x')", /permission denied for table schema_migrations/],
      ['DELETE FROM schema_migrations', /permission denied for table schema_migrations/],
    ];
    for (const [statement, error] of refused) await expect(runAs(app, [statement]), statement).rejects.toThrow(error);

    // Identity columns need no sequence privilege (the app role has none, and inserts audit events).
    const [sequence] = await queryAs<{ usage: boolean }>(
      app,
      `SELECT has_sequence_privilege(pg_get_serial_sequence('audit_events', 'event_id'), 'USAGE') AS usage`,
    );
    expect(sequence).toEqual({ usage: false });

    // The write probe readiness runs after failed writes touches what serve writes; it works with these grants.
    const store = await openStore({ databaseUrl: pgUrl(database, app) });
    try {
      await store.probeWrites();
    } finally {
      await store.close();
    }
  });

  // Steps: the two log lines, the expiry sweep, the exit after SIGTERM.
  it('serve runs as the app role: a whole task over mTLS, an admin key rotation, the expiry sweep, /readyz 200', { timeout: cliTimeout(4) }, async () => {
    const running = startCli(['serve'], serveEnv(app, { TASK_BROKER_SWEEP_INTERVAL: '200ms' }));
    broker = running;
    const listening = await running.waitForLog((l) => l.msg === 'task-broker listening');
    const http = await running.waitForLog((l) => l.msg === 'HTTP listening');
    const address = `127.0.0.1:${String(listening.port)}`;
    const ops = `http://127.0.0.1:${String(http.port)}`;

    const readyz = await fetch(`${ops}/readyz`);
    const readiness = await readyz.text();
    expect(readyz.status, readiness).toBe(200);
    expect(JSON.parse(readiness)).toMatchObject({ status: 'ready' });
    expect(readiness).toContain('migrations');

    const worker = BrokerClient.withSvid(address, await devCaSvid(pki, 'worker', BROKER_ID));
    const api = BrokerClient.withSvid(address, await devCaSvid(pki, 'api', BROKER_ID));
    const admin = AdminClient.withSvid(address, await devCaSvid(pki, 'admin', BROKER_ID));
    clients.push(worker, api, admin);
    const spec = { action: 'report.read', resources: ['reports/2026'], audience: API_ID, scopes: ['reports:read'], ttl: { seconds: 600 } };

    const { task } = await worker.createTask({ spec });
    expect(task?.state).toBe('TASK_STATE_ACTIVE');
    const taskId = task!.taskId;
    const { token } = await worker.issueToken({ taskId });
    const presenterCertThumbprint = (await worker.whoAmI()).certThumbprint;
    expect(await api.verifyToken({ token, presenterCertThumbprint })).toMatchObject({ valid: true, bindingChecked: true });
    const completed = await worker.completeTask(taskId, 'done');
    expect(completed).toMatchObject({ task: { state: 'TASK_STATE_COMPLETED' }, revokedTokens: 1 });
    expect(await api.verifyToken({ token, presenterCertThumbprint })).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED' });

    // The admin plane: a key rotation (signing keys are written at run time, not by migrations) and the audit trail.
    // Immediate, so that the next token is signed with it (a scheduled rotation is tested in test/tokens/).
    const rotated = await admin.rotateSigningKey({ immediate: true });
    expect(rotated.kid).not.toBe('');
    const { token: second } = await worker.issueToken({ taskId: (await worker.createTask({ spec })).task!.taskId });
    expect((JSON.parse(Buffer.from(second.split('.')[0] ?? '', 'base64url').toString()) as { kid: string }).kid).toBe(rotated.kid);
    const trail = await admin.getWholeAuditTrail(taskId);
    expect(trail.events.map((e) => e.eventType)).toEqual(['task.created', 'token.issued', 'token.verified', 'task.completed', 'token.verified']);
    expect(trail.chain).toMatchObject({ ok: true });

    // The sweeper expires a task (tasks, tokens and the trail written by the broker alone) and prunes old tokens (DELETE).
    const { task: shortLived } = await worker.createTask({ spec: { ...spec, ttl: { seconds: 1 } } });
    const sweep = await running.waitForLog((l) => l.msg === 'expiry sweep' && Number(l.expired) >= 1);
    expect(sweep.expired).toBeGreaterThanOrEqual(1);
    expect((await worker.getTask(shortLived!.taskId)).task?.state).toBe('TASK_STATE_EXPIRED');

    running.child.kill('SIGTERM');
    expect(await running.exited, running.stderr()).toBe(0);
    const lines = running
      .stdout()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    // Nothing failed along the way (a missing privilege shows up as an error line, e.g. a failed sweep).
    expect(lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    expect(lines.at(-1)?.msg).toBe('stopped');
  });

  it('serve --migrate as the app role exits at once with what to do, instead of hanging or half-starting', async () => {
    const result = await runCli(['serve'], { env: serveEnv(app, { TASK_BROKER_MIGRATE: 'true' }) });
    expect(result.code, result.stdout).toBe(1);
    expect(result.stderr).toMatch(/cannot create the schema_migrations table: permission denied for schema public/);
    expect(result.stderr).toMatch(/run 'task-broker migrate' as that role, and start 'serve' without --migrate/);
    expect(result.stdout).not.toContain('task-broker listening');
  });

  it('a table a later migration creates (as the owner) is covered by the default privileges: nothing to grant after migrating', async () => {
    await runAs(owner, ['CREATE TABLE lp_later_migration (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)']);
    await runAs(app, [
      "INSERT INTO lp_later_migration (note) VALUES ('written by the app role')",
      "UPDATE lp_later_migration SET note = 'updated'",
      'DELETE FROM lp_later_migration',
    ]);
    const [privileges] = await queryAs<{ s: boolean; i: boolean; u: boolean; d: boolean; truncate: boolean }>(
      app,
      `SELECT has_table_privilege('lp_later_migration', 'SELECT') AS s, has_table_privilege('lp_later_migration', 'INSERT') AS i,
              has_table_privilege('lp_later_migration', 'UPDATE') AS u, has_table_privilege('lp_later_migration', 'DELETE') AS d,
              has_table_privilege('lp_later_migration', 'TRUNCATE') AS truncate`,
    );
    expect(privileges).toEqual({ s: true, i: true, u: true, d: true, truncate: false });
  });
});
