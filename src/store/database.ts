/**
 * Opens the system of record: PostgreSQL through `pg` when a URL is given, otherwise embedded
 * PGlite (in a data directory, or in memory for tests). Both speak the same SQL and run the
 * same migrations; callers only see a Kysely<Schema>. PGlite is imported only when it is opened.
 */
import { CompiledQuery, Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import pg from 'pg';
import { CommitOutcomeUnknownError, databaseFailure, type DatabaseFailure } from './failures.js';
import { listenOnPglite, listenOnPostgres, type ListenHandlers, type Listener } from './listener.js';
import type { Schema } from './schema.js';
import { runTransaction, type TransactionObserver } from './transaction.js';

export type Db = Kysely<Schema>;
export type Tx = Transaction<Schema>;
export type DbOrTx = Db | Tx;

export type StoreKind = 'postgres' | 'pglite';

/** Starts a statement the broker sends on its own schedule, not for a call: not counted in statementsSent. */
export const BACKGROUND_SQL = '/* background */ ';

/** Whether the arguments of a query call are a background statement (text first, or a config with `text`). */
function isBackground(args: unknown[]): boolean {
  const first = args[0];
  const text = typeof first === 'string' ? first : (first as { text?: unknown } | undefined)?.text;
  return typeof text === 'string' && text.startsWith(BACKGROUND_SQL);
}

export interface Store {
  readonly kind: StoreKind;
  readonly db: Db;
  /** Where the data lives, without credentials: for logs. */
  readonly description: string;
  /** How recent write transactions ended: readiness turns on a run of failures. */
  readonly writes: WriteHealth;
  /** Connections in use and idle (PostgreSQL pool; PGlite has one). */
  poolStats(): { total: number; idle: number; waiting: number; max: number };
  /** One round trip on a connection of its own, so a saturated pool does not look like a dead database. */
  ping(): Promise<void>;
  /**
   * Exercises every privilege the broker writes with (INSERT/UPDATE on its tables) in a
   * transaction that is always rolled back: proves writes work without changing anything.
   */
  probeWrites(): Promise<void>;
  /** Runs `work` in a transaction (see runTransaction); its outcome feeds `writes`. */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  /**
   * Runs one batch of the write path (tb_apply, a prepared statement) and returns one result per
   * operation. A connection lost after the statement was sent raises CommitOutcomeUnknownError.
   */
  applyBatch(opsJson: string): Promise<unknown[]>;
  /** One prepared read outside any transaction. */
  read<R>(name: string, text: string, values: unknown[]): Promise<R[]>;
  /** LISTEN on `channel` on a connection of its own, re-established after failures (listener.ts). */
  listen(channel: string, handlers: ListenHandlers): Listener;
  /**
   * Statements sent to the database since the store opened, one per round trip; readiness probes
   * and background reads (statements starting with BACKGROUND_SQL, the revocation feed's) aside.
   */
  readonly statementsSent: number;
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
  /** How long a request may wait for a pool connection (or a new connection to open) before UNAVAILABLE. */
  poolTimeoutMs?: number;
  /**
   * How long openStore keeps trying to reach PostgreSQL at start, with backoff, before it gives
   * up (a broker may start before its database). 0: one attempt.
   */
  connectWaitMs?: number;
  /** Told about each failed attempt to reach the database at start, and about connections that fail later. */
  onConnectionProblem?: (problem: { phase: 'start' | 'pool'; message: string; attempt?: number; retryInMs?: number }) => void;
}

/** Pool and timeout defaults of a PostgreSQL store (the composition root's configuration starts from these). */
export const DEFAULT_POOL = { maxConnections: 10, poolTimeoutMs: 5_000, statementTimeoutMs: 30_000 } as const;

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

/** Tracks consecutive failed write transactions (server-side failures only: conflicts and caller errors do not count). */
export class WriteHealth implements TransactionObserver {
  #consecutiveFailures = 0;
  #lastFailure: DatabaseFailure | undefined;
  #lastFailureAt: Date | undefined;

  committed(): void {
    this.#consecutiveFailures = 0;
  }

  failed(failure: DatabaseFailure): void {
    this.#consecutiveFailures += 1;
    this.#lastFailure = failure;
    this.#lastFailureAt = new Date();
  }

  get consecutiveFailures(): number {
    return this.#consecutiveFailures;
  }

  get lastFailure(): { reason: string; kind: string; at: Date } | undefined {
    return this.#lastFailure && this.#lastFailureAt ? { reason: this.#lastFailure.reason, kind: this.#lastFailure.kind, at: this.#lastFailureAt } : undefined;
  }
}

/** Inserts into the tables the broker writes and touches the rows it updates, then rolls back. */
async function probeWrites(db: Db): Promise<void> {
  const probe = `probe:${randomUUID()}`;
  const tx = await db.startTransaction().execute();
  try {
    await sql`insert into audit_chains (chain_id, last_seq, last_hash) values (${probe}, 0, '')`.execute(tx);
    await sql`insert into audit_events (chain_id, seq, event_type, actor_spiffe_id, request_id, occurred_at, details, prev_hash, hash)
      values (${probe}, 1, 'probe', 'probe', 'probe', now(), '{}'::jsonb, '', '')`.execute(tx);
    await sql`update audit_chains set last_seq = 1 where chain_id = ${probe}`.execute(tx);
    await sql`update tasks set state = state where false`.execute(tx);
    await sql`update tokens set revoked_at = revoked_at where false`.execute(tx);
  } finally {
    await tx
      .rollback()
      .execute()
      .catch(() => undefined);
  }
}

/** The write path's one statement (see migrations/0003_one_round_trip.sql). */
const APPLY_SQL = 'select tb_apply($1::jsonb) as r';

// Not unref'd: while it waits for its database, this timer is what keeps the process alive.
const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function openPostgres(url: string, options: StoreOptions): Promise<Store> {
  const statementTimeoutMs = options.statementTimeoutMs ?? DEFAULT_POOL.statementTimeoutMs;
  const poolTimeoutMs = options.poolTimeoutMs ?? DEFAULT_POOL.poolTimeoutMs;
  const report = options.onConnectionProblem ?? (() => undefined);
  const common = {
    connectionString: url,
    statement_timeout: statementTimeoutMs,
    // A transaction left open by a stalled process must not hold row locks forever.
    idle_in_transaction_session_timeout: Math.max(statementTimeoutMs * 2, 10_000),
    // Client side too: a server that vanished without a FIN or RST (failover, partition) must not hang a call.
    query_timeout: statementTimeoutMs + 5_000,
    connectionTimeoutMillis: poolTimeoutMs,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    application_name: 'task-broker',
  };
  const pool = new pg.Pool({ ...common, max: options.maxConnections ?? DEFAULT_POOL.maxConnections });
  // The health pool is separate so that a burst filling the main pool does not fail readiness.
  const health = new pg.Pool({ ...common, max: 1, idleTimeoutMillis: 30_000, statement_timeout: 2_000, query_timeout: 3_000 });
  const onClientError = (phase: 'pool') => (err: Error) => report({ phase, message: err.message });
  for (const p of [pool, health]) {
    // An idle client's error (server restart) must not crash the process; the pool replaces it.
    p.on('error', onClientError('pool'));
    // Nor may a client's error while it is checked out: pg-pool removes its own listener then.
    // The query in flight fails with the error; the client is not queryable and is dropped on release.
    p.on('connect', (client) => client.on('error', () => undefined));
  }
  let statementsSent = 0;
  pool.on('connect', (client) => {
    // Counts every statement this connection sends (kysely's included): one per round trip.
    const query = client.query.bind(client) as (...args: unknown[]) => unknown;
    (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
      if (!isBackground(args)) statementsSent += 1;
      return query(...args);
    };
  });
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
  const healthDb = new Kysely<Schema>({ dialect: new PostgresDialect({ pool: health }) });
  const writes = new WriteHealth();
  const store: Store = {
    kind: 'postgres',
    db,
    description: redactUrl(url),
    writes,
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, max: pool.options.max }),
    ping: async () => {
      await sql`select 1`.execute(healthDb);
    },
    probeWrites: () => probeWrites(healthDb),
    transaction: (work) => runTransaction(db, work, { observer: writes }),
    applyBatch: async (opsJson) => {
      const client = await pool.connect();
      let released = false;
      try {
        const result = await client.query<{ r: unknown[] }>({ name: 'tb_apply', text: APPLY_SQL, values: [opsJson] });
        return result.rows[0]!.r;
      } catch (err) {
        const failure = databaseFailure(err);
        // The statement was sent: if the connection died (or the client gave up reading), it may
        // have committed first. A statement the server cancelled (timeout) was rolled back.
        if (failure?.kind === 'connection') {
          client.release(err as Error);
          released = true;
          throw new CommitOutcomeUnknownError(failure);
        }
        throw err;
      } finally {
        if (!released) client.release();
      }
    },
    read: async <R>(name: string, text: string, values: unknown[]) => (await pool.query({ name, text, values })).rows as R[],
    listen: (channel, handlers) => listenOnPostgres({ ...common, statement_timeout: undefined, query_timeout: undefined }, channel, handlers),
    get statementsSent() {
      return statementsSent;
    },
    close: async () => {
      await Promise.all([db.destroy(), healthDb.destroy()]);
    },
  };
  const waitMs = options.connectWaitMs ?? 0;
  const started = Date.now();
  for (let attempt = 1, backoff = 250; ; attempt++, backoff = Math.min(backoff * 2, 5_000)) {
    try {
      await store.ping();
      return store;
    } catch (err) {
      const message = (err as Error).message;
      const left = waitMs - (Date.now() - started);
      if (left <= 0) {
        await store.close();
        throw new Error(
          `cannot reach PostgreSQL at ${redactUrl(url)}${attempt > 1 ? ` after ${attempt} attempts in ${Math.round((Date.now() - started) / 1000)} s` : ''}: ${message}`,
        );
      }
      const retryInMs = Math.min(Math.round(backoff * (0.5 + Math.random() / 2)), left);
      report({ phase: 'start', message, attempt, retryInMs });
      await delay(retryInMs);
    }
  }
}

/** What the container image leaves out: it runs on PostgreSQL only (Dockerfile). */
const PGLITE_PACKAGES = ['@electric-sql/pglite', 'kysely-pglite-dialect'];

/**
 * Loaded here, not at the top: a broker on PostgreSQL (and anything else that imports the
 * store) never loads the embedded database, and the container image does not have it.
 */
async function loadPglite() {
  try {
    const [{ PGlite }, { PGliteDialect }] = await Promise.all([import('@electric-sql/pglite'), import('kysely-pglite-dialect')]);
    return { PGlite, PGliteDialect };
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    if (code === 'ERR_MODULE_NOT_FOUND' && PGLITE_PACKAGES.some((name) => message.includes(`'${name}'`))) {
      throw new Error('this image has no embedded PostgreSQL (PGlite); set --database-url or TASK_BROKER_DATABASE_URL');
    }
    throw err;
  }
}

async function openPglite(dataDir: string | undefined): Promise<Store> {
  const { PGlite, PGliteDialect } = await loadPglite();
  if (dataDir) await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const pglite = await PGlite.create(dataDir ? { dataDir } : {});
  let statementsSent = 0;
  const query = pglite.query.bind(pglite);
  pglite.query = ((...args: Parameters<typeof query>) => {
    if (!isBackground(args)) statementsSent += 1;
    return query(...args);
  }) as typeof pglite.query;
  const db = new Kysely<Schema>({ dialect: new PGliteDialect(pglite) });
  const writes = new WriteHealth();
  let busy = false;
  return {
    kind: 'pglite',
    db,
    description: dataDir ? `embedded PGlite in ${dataDir}` : 'embedded PGlite in memory',
    writes,
    poolStats: () => ({ total: 1, idle: busy ? 0 : 1, waiting: 0, max: 1 }),
    ping: async () => {
      busy = true;
      try {
        await sql`select 1`.execute(db);
      } finally {
        busy = false;
      }
    },
    probeWrites: () => probeWrites(db),
    transaction: (work) => runTransaction(db, work, { observer: writes }),
    // Through kysely, whose driver serializes use of PGlite's one connection (a statement sent
    // straight to PGlite while a kysely transaction is open would run inside that transaction).
    applyBatch: async (opsJson) => (await sql<{ r: unknown[] }>`select tb_apply(${opsJson}::jsonb) as r`.execute(db)).rows[0]!.r,
    read: async <R>(_name: string, text: string, values: unknown[]) => (await db.executeQuery<R>(CompiledQuery.raw(text, values))).rows,
    listen: (channel, handlers) => listenOnPglite(pglite, channel, handlers),
    get statementsSent() {
      return statementsSent;
    },
    // Destroying the Kysely instance closes PGlite, which a process needs to exit.
    close: () => db.destroy(),
  };
}
