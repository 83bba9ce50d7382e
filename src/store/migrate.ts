/**
 * Forward-only migrations from migrations/*.sql, applied in name order, each file in its own
 * transaction, serialized across replicas by an advisory lock. An applied file whose content
 * changed is an error: history is never rewritten.
 *
 * Only `migrate()` writes (it needs a role that may create tables: the schema's owner).
 * `migrationStatus()` only reads, so `serve` without `--migrate` and its readiness check run
 * as a role that may only read and write rows (see test/store/least-privilege.test.ts).
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'kysely';
import { migrationsDir } from '../files/project-paths.js';
import type { Db } from './database.js';

export interface Migration {
  version: string;
  checksum: string;
  statements: string[];
}

/** An arbitrary constant shared by every replica: "task-broker migrations". */
const MIGRATION_LOCK_KEY = 7_305_118_244_101n;

/**
 * Splits a migration file into statements: each ends with ';' at the end of a line, outside a
 * dollar-quoted body ($$ … $$, for functions). Lines that start with '--' are comments.
 */
export function splitStatements(text: string): string[] {
  const statements: string[] = [];
  let current: string[] = [];
  let inBody = false;
  for (const line of text.split('\n')) {
    if (!inBody && line.trimStart().startsWith('--')) continue;
    current.push(line);
    if ((line.split('$$').length - 1) % 2 === 1) inBody = !inBody;
    if (!inBody && /;\s*$/.test(line)) {
      statements.push(current.join('\n').replace(/;\s*$/, '').trim());
      current = [];
    }
  }
  statements.push(current.join('\n').trim());
  return statements.filter((s) => s.length > 0);
}

export async function loadMigrations(dir = migrationsDir): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (file) => {
      const text = await readFile(join(dir, file), 'utf8');
      return { version: file.replace(/\.sql$/, ''), checksum: createHash('sha256').update(text).digest('hex'), statements: splitStatements(text) };
    }),
  );
}

const SCHEMA_MIGRATIONS_DDL = sql`create table if not exists schema_migrations (
  version text primary key,
  checksum text not null,
  applied_at timestamptz not null default now()
)`;

/**
 * Why applying migrations failed, with what to do about it when the role lacks privileges
 * (SQLSTATE 42501, insufficient_privilege): typically `serve --migrate` run as the data-only role.
 */
function migrationError(what: string, err: unknown): Error {
  const e = err as Error & { code?: unknown };
  const hint =
    e.code === '42501'
      ? ". Applying migrations needs a role that may create and alter the broker's tables (the schema's owner): " +
        "run 'task-broker migrate' as that role, and start 'serve' without --migrate as the data-only role"
      : '';
  return new Error(`${what}: ${e.message}${hint}`, { cause: err });
}

/** Creates the bookkeeping table under the migration lock, so replicas starting together do not race on it. */
async function ensureTable(db: Db): Promise<void> {
  try {
    await db.transaction().execute(async (tx) => {
      await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`.execute(tx);
      await SCHEMA_MIGRATIONS_DDL.execute(tx);
    });
  } catch (err) {
    throw migrationError('cannot create the schema_migrations table', err);
  }
}

/** Whether schema_migrations exists (is visible on the search path, where it is created and read). Reads only. */
async function tableExists(db: Db): Promise<boolean> {
  const { rows } = await sql<{ found: boolean }>`select to_regclass('schema_migrations') is not null as found`.execute(db);
  return rows[0]?.found === true;
}

export interface MigrationStatus {
  applied: string[];
  pending: string[];
}

/**
 * Which migrations are applied and which are pending. Never writes: without a schema_migrations
 * table (a new database) every migration is pending.
 */
export async function migrationStatus(db: Db, migrations?: Migration[]): Promise<MigrationStatus> {
  const all = migrations ?? (await loadMigrations());
  const rows = (await tableExists(db)) ? await db.selectFrom('schema_migrations').select(['version', 'checksum']).execute() : [];
  const applied = new Map(rows.map((r) => [r.version, r.checksum]));
  for (const m of all) {
    const checksum = applied.get(m.version);
    if (checksum !== undefined && checksum !== m.checksum) {
      throw new Error(
        `migration ${m.version} was changed after it was applied (checksum ${checksum.slice(0, 12)}… in the database, ${m.checksum.slice(0, 12)}… on disk)`,
      );
    }
  }
  const known = new Set(all.map((m) => m.version));
  const unknown = [...applied.keys()].filter((v) => !known.has(v));
  if (unknown.length > 0) {
    throw new Error(`the database has migrations this build does not know (${unknown.join(', ')}): it was migrated by a newer task-broker`);
  }
  return {
    applied: all.filter((m) => applied.has(m.version)).map((m) => m.version),
    pending: all.filter((m) => !applied.has(m.version)).map((m) => m.version),
  };
}

/** Applies pending migrations; returns the versions applied by this call. */
export async function migrate(db: Db, migrations?: Migration[]): Promise<string[]> {
  const all = migrations ?? (await loadMigrations());
  await ensureTable(db);
  const done: string[] = [];
  for (const m of all) {
    const applied = await db.transaction().execute(async (tx) => {
      await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`.execute(tx);
      const existing = await tx.selectFrom('schema_migrations').select('checksum').where('version', '=', m.version).executeTakeFirst();
      if (existing) {
        if (existing.checksum !== m.checksum) throw new Error(`migration ${m.version} was changed after it was applied`);
        return false;
      }
      try {
        for (const statement of m.statements) await sql.raw(statement).execute(tx);
        await tx.insertInto('schema_migrations').values({ version: m.version, checksum: m.checksum }).execute();
      } catch (err) {
        throw migrationError(`migration ${m.version} failed`, err);
      }
      return true;
    });
    if (applied) done.push(m.version);
  }
  return done;
}
