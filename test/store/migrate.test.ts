import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrationsDir } from '../../src/files/project-paths.js';
import type { Store } from '../../src/store/database.js';
import { loadMigrations, migrate, migrationStatus, splitStatements } from '../../src/store/migrate.js';
import { createTestDatabase, STORES, type TestDatabase } from '../helpers/db.js';

describe('splitStatements', () => {
  it('splits on ; at line end and drops comment lines', () => {
    expect(splitStatements('-- c\nCREATE TABLE a (x int);\n\nCREATE INDEX i ON a (x) WHERE x > 0;\n')).toEqual([
      'CREATE TABLE a (x int)',
      'CREATE INDEX i ON a (x) WHERE x > 0',
    ]);
  });
});

describe.each(STORES)('migrations on %s', (kind) => {
  let database: TestDatabase;
  let store: Store;
  beforeAll(async () => {
    database = await createTestDatabase(kind);
    store = await database.open();
  });
  afterAll(async () => {
    await store.close();
    await database.drop();
  });

  it('reading the status never writes: on a new database every migration is pending, in a read-only transaction, and nothing is created', async () => {
    const all = await loadMigrations();
    const status = await store.db.transaction().execute(async (tx) => {
      await sql`set transaction read only`.execute(tx);
      return migrationStatus(tx);
    });
    expect(status).toEqual({ applied: [], pending: all.map((m) => m.version) });
    const tables = await sql<{ n: number }>`select count(*)::int as n from information_schema.tables where table_schema = 'public'`.execute(store.db);
    expect(tables.rows[0]?.n).toBe(0);
  });

  it('applies every migration once, creates the tables, and is a no-op the second time', async () => {
    const all = await loadMigrations();
    expect(all.length).toBeGreaterThan(0);
    expect((await migrationStatus(store.db)).pending).toEqual(all.map((m) => m.version));
    expect(await migrate(store.db)).toEqual(all.map((m) => m.version));
    expect(await migrate(store.db)).toEqual([]);
    expect(await migrationStatus(store.db)).toEqual({ applied: all.map((m) => m.version), pending: [] });
    // Also read-only once the table exists.
    expect(
      await store.db.transaction().execute(async (tx) => {
        await sql`set transaction read only`.execute(tx);
        return migrationStatus(tx);
      }),
    ).toEqual({ applied: all.map((m) => m.version), pending: [] });
    const tables = await sql<{
      table_name: string;
    }>`select table_name from information_schema.tables where table_schema = 'public' order by table_name`.execute(store.db);
    expect(tables.rows.map((r) => r.table_name)).toEqual([
      'audit_chains',
      'audit_events',
      'broker_instance',
      'revocation_log_head',
      'revocations',
      'schema_migrations',
      'signing_keys',
      'task_results',
      'tasks',
      'token_use_reports',
      'tokens',
    ]);
  });

  it('refuses a migration changed after it was applied', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tb-mig-'));
    try {
      const all = await loadMigrations();
      const first = all[0]!;
      await writeFile(join(dir, `${first.version}.sql`), '-- edited\nSELECT 1;\n');
      await expect(migrationStatus(store.db, await loadMigrations(dir))).rejects.toThrow(/was changed after it was applied/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a failing migration leaves nothing behind', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tb-mig-'));
    try {
      for (const m of await loadMigrations()) await writeFile(join(dir, `${m.version}.sql`), await readFile(join(migrationsDir, `${m.version}.sql`), 'utf8'));
      await writeFile(join(dir, '9999_broken.sql'), 'CREATE TABLE half_done (x int);\nSELECT no_such_function();\n');
      await expect(migrate(store.db, await loadMigrations(dir))).rejects.toThrow(/no_such_function/);
      const t = await sql<{ n: number }>`select count(*)::int as n from information_schema.tables where table_name = 'half_done'`.execute(store.db);
      expect(t.rows[0]?.n).toBe(0);
      expect((await migrationStatus(store.db)).pending).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
