/**
 * Real databases for tests: a fresh PostgreSQL database (unique name, dropped afterwards) on
 * the local server, and embedded PGlite. Suites run against both with `describe.each(STORES)`.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { openStore, type Store, type StoreKind } from '../../src/store/database.js';
import { migrate } from '../../src/store/migrate.js';

export const STORES: StoreKind[] = ['postgres', 'pglite'];

/** A superuser's URL on the test server (trust auth on CI: no passwords). */
export const ADMIN_URL = process.env.TASK_BROKER_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** The URL of `database` on the test server, as `user` (default: the admin URL's user). */
export function pgUrl(database: string, user?: string): string {
  const url = new URL(ADMIN_URL);
  url.pathname = `/${database}`;
  if (user !== undefined) {
    url.username = user;
    url.password = '';
  }
  return url.toString();
}

/** A name no other test run uses (a database or role name: lower case, digits, underscores). */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
}

export interface TestDatabase {
  kind: StoreKind;
  /** postgres URL for the postgres kind; undefined for PGlite. */
  url?: string;
  /** PGlite data directory when the test asked for one. */
  dataDir?: string;
  open(): Promise<Store>;
  drop(): Promise<void>;
}

/** The rows of one query on a connection of its own to `url`. */
export async function queryRows<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/** Runs `text` (one or more statements) as the admin, on `database` (default: the admin URL's). */
export async function adminQuery(text: string, database?: string): Promise<void> {
  const client = new pg.Client({ connectionString: database === undefined ? ADMIN_URL : pgUrl(database) });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

/** A new, empty database of the given kind. PGlite lives in `dataDir` when given, else in memory (then open() may be called once). */
export async function createTestDatabase(kind: StoreKind, dataDir?: string): Promise<TestDatabase> {
  if (kind === 'pglite') {
    return { kind, dataDir, open: () => openStore({ dataDir }), drop: () => Promise.resolve() };
  }
  const name = uniqueName('tb_test');
  await adminQuery(`CREATE DATABASE ${name}`);
  const url = pgUrl(name);
  return {
    kind,
    url,
    open: () => openStore({ databaseUrl: url, maxConnections: 20 }),
    drop: () => adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

/** Opens a migrated store of the given kind; `cleanup` closes it and drops the database. */
export async function migratedStore(kind: StoreKind): Promise<{ store: Store; database: TestDatabase; cleanup(): Promise<void> }> {
  const database = await createTestDatabase(kind);
  const store = await database.open();
  await migrate(store.db);
  return {
    store,
    database,
    cleanup: async () => {
      await store.close();
      await database.drop();
    },
  };
}
