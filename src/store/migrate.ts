/**
 * Forward-only migrations from migrations/*.sql, applied in name order, each file in its own
 * transaction, serialized across replicas by an advisory lock. An applied file whose content
 * changed is an error: history is never rewritten.
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

/** Splits a migration file into statements: each ends with ';' at the end of a line. */
export function splitStatements(text: string): string[] {
  const withoutComments = text
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('--'))
    .join('\n');
  return withoutComments
    .split(/;\s*$/m)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
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

/** Creates the bookkeeping table under the migration lock, so replicas starting together do not race on it. */
async function ensureTable(db: Db): Promise<void> {
  await db.transaction().execute(async (tx) => {
    await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`.execute(tx);
    await sql`create table if not exists schema_migrations (
      version text primary key,
      checksum text not null,
      applied_at timestamptz not null default now()
    )`.execute(tx);
  });
}

export interface MigrationStatus {
  applied: string[];
  pending: string[];
}

export async function migrationStatus(db: Db, migrations?: Migration[]): Promise<MigrationStatus> {
  const all = migrations ?? (await loadMigrations());
  await ensureTable(db);
  const rows = await db.selectFrom('schema_migrations').select(['version', 'checksum']).execute();
  const applied = new Map(rows.map((r) => [r.version, r.checksum]));
  for (const m of all) {
    const checksum = applied.get(m.version);
    if (checksum !== undefined && checksum !== m.checksum) {
      throw new Error(`migration ${m.version} was changed after it was applied (checksum ${checksum.slice(0, 12)}… in the database, ${m.checksum.slice(0, 12)}… on disk)`);
    }
  }
  const known = new Set(all.map((m) => m.version));
  const unknown = [...applied.keys()].filter((v) => !known.has(v));
  if (unknown.length > 0) {
    throw new Error(`the database has migrations this build does not know (${unknown.join(', ')}): it was migrated by a newer task-broker`);
  }
  return { applied: all.filter((m) => applied.has(m.version)).map((m) => m.version), pending: all.filter((m) => !applied.has(m.version)).map((m) => m.version) };
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
      for (const statement of m.statements) await sql.raw(statement).execute(tx);
      await tx.insertInto('schema_migrations').values({ version: m.version, checksum: m.checksum }).execute();
      return true;
    });
    if (applied) done.push(m.version);
  }
  return done;
}
