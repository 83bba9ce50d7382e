/**
 * Runs one unit of work in a database transaction and says precisely how it ended: committed,
 * rolled back (nothing happened), or unknown (the connection died while COMMIT was in flight).
 * kysely's transaction() cannot tell the last two apart, which a caller deciding whether to retry
 * needs. A conflict (serialization failure, deadlock) rolls everything back, so the whole unit is
 * run again a bounded number of times before the conflict reaches the caller.
 */
import type { Db, Tx } from './database.js';
import { CommitOutcomeUnknownError, databaseFailure, isServerSideFailure, type DatabaseFailure } from './failures.js';

/** Told how each transaction ended (readiness counts runs of failed writes). */
export interface TransactionObserver {
  committed(): void;
  /** The database could not do the work (unreachable, timeout, privilege): not a caller's mistake. */
  failed(failure: DatabaseFailure): void;
}

export interface TransactionOptions {
  /** How many times a conflicted unit is run again before the conflict is raised; default 2. */
  conflictRetries?: number;
  observer?: TransactionObserver;
}

export async function runTransaction<T>(db: Db, work: (tx: Tx) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
  const retries = options.conflictRetries ?? 2;
  for (let attempt = 0; ; attempt++) {
    try {
      const result = await runOnce(db, work);
      options.observer?.committed();
      return result;
    } catch (err) {
      const failure = err instanceof CommitOutcomeUnknownError ? err.failure : databaseFailure(err);
      if (failure?.kind === 'conflict' && attempt < retries) continue;
      if (isServerSideFailure(failure) && failure) options.observer?.failed(failure);
      throw err;
    }
  }
}

async function runOnce<T>(db: Db, work: (tx: Tx) => Promise<T>): Promise<T> {
  const tx = await db.startTransaction().execute();
  let result: T;
  try {
    result = await work(tx);
  } catch (err) {
    // The server has rolled back already when the connection died; the rollback releases the connection either way.
    await tx
      .rollback()
      .execute()
      .catch(() => undefined);
    throw err;
  }
  try {
    await tx.commit().execute();
  } catch (err) {
    await tx
      .rollback()
      .execute()
      .catch(() => undefined);
    const failure = databaseFailure(err);
    // A connection that failed during COMMIT may have committed first: say so rather than guess.
    if (failure && (failure.kind === 'connection' || failure.kind === 'statement-timeout')) throw new CommitOutcomeUnknownError(failure);
    throw err;
  }
  return result;
}
