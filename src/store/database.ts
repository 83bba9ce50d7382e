/**
 * Opens the system of record: PostgreSQL through `pg` when a URL is given, otherwise embedded
 * PGlite (in a data directory, or in memory for tests). Both speak the same SQL and run the
 * same migrations; callers only see a Kysely<Schema>.
 */
import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import { PGliteDialect } from 'kysely-pglite-dialect';
import { mkdir } from 'node:fs/promises';
import pg from 'pg';
import type { Schema } from './schema.js';

export type Db = Kysely<Schema>;
export type Tx = Transaction<Schema>;
export type DbOrTx = Db | Tx;

export type StoreKind = 'postgres' | 'pglite';

export interface Store {
  readonly kind: StoreKind;
  readonly db: Db;
  /** Where the data lives, without credentials: for logs. */
  readonly description: string;
  /** Connections in use and idle (PostgreSQL pool; PGlite has one). */
  poolStats(): { total: number; idle: number; waiting: number };
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface StoreOptions {
  /** postgres://… ; when absent, embedded PGlite. */
  databaseUrl?: string;
  /** PGlite data directory; when absent too, PGlite runs in memory. */
  dataDir?: string;
  /** PostgreSQL pool size. */
  maxConnections?: number;
  /** Per-statement timeout on PostgreSQL, so a stuck query cannot hang a request forever. */
  statementTimeoutMs?: number;
}

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres (unparseable URL)';
  }
}

export async function openStore(options: StoreOptions): Promise<Store> {
  if (options.databaseUrl) return openPostgres(options.databaseUrl, options);
  return openPglite(options.dataDir);
}

async function openPostgres(url: string, options: StoreOptions): Promise<Store> {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.maxConnections ?? 10,
    statement_timeout: options.statementTimeoutMs ?? 30_000,
    connectionTimeoutMillis: 10_000,
    application_name: 'task-broker',
  });
  // An idle client's error (server restart) must not crash the process; the pool replaces it.
  pool.on('error', () => undefined);
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
  const store: Store = {
    kind: 'postgres',
    db,
    description: redactUrl(url),
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    ping: async () => {
      await sql`select 1`.execute(db);
    },
    close: () => db.destroy(),
  };
  try {
    await store.ping();
  } catch (err) {
    await db.destroy();
    throw new Error(`cannot reach PostgreSQL at ${redactUrl(url)}: ${(err as Error).message}`);
  }
  return store;
}

async function openPglite(dataDir: string | undefined): Promise<Store> {
  if (dataDir) await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const pglite = await PGlite.create(dataDir ? { dataDir } : {});
  const db = new Kysely<Schema>({ dialect: new PGliteDialect(pglite) });
  let busy = false;
  return {
    kind: 'pglite',
    db,
    description: dataDir ? `embedded PGlite in ${dataDir}` : 'embedded PGlite in memory',
    poolStats: () => ({ total: 1, idle: busy ? 0 : 1, waiting: 0 }),
    ping: async () => {
      busy = true;
      try {
        await sql`select 1`.execute(db);
      } finally {
        busy = false;
      }
    },
    // Destroying the Kysely instance closes PGlite, which a process needs to exit.
    close: () => db.destroy(),
  };
}
