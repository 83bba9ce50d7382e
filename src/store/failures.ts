/**
 * What a database error means for the caller. A database restart, a lost connection, a full
 * pool or a statement timeout are the broker's trouble, not the caller's request: they become
 * `unavailable` (retry with backoff, on any replica). A serialization failure or a deadlock is a
 * conflict the whole transaction can be retried after: `aborted`. A connection lost while the
 * COMMIT was in flight leaves the outcome unknown, and the message says so.
 *
 * Everything here reads error codes (SQLSTATE, Node socket errors, pg's own messages); nothing
 * runs SQL.
 */
import { BrokerError } from '../errors.js';

export type DatabaseFailureKind =
  /** The database cannot be reached or went away: connection refused/reset, server shutting down. */
  | 'connection'
  /** No connection could be had in time: pool exhausted or connect timed out. */
  | 'pool-timeout'
  /** A statement ran longer than the statement timeout (or was cancelled by the server). */
  | 'statement-timeout'
  /** Serialization failure, deadlock, lock not available: retry the whole transaction. */
  | 'conflict'
  /** The server is out of a resource (connections, memory, disk). */
  | 'server-resources'
  /** The role lacks a privilege, or the database is read-only (a standby): an operator's fix. */
  | 'privilege'
  /** Anything else from the database: a bug, not a fault. */
  | 'other';

export interface DatabaseFailure {
  readonly kind: DatabaseFailureKind;
  /** One sentence, safe to show a caller: no SQL text, no data values. */
  readonly reason: string;
}

const SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNABORTED',
  'EADDRNOTAVAIL',
]);

/** pg's own messages for a connection that died or never came (it sets no code on these). */
const CONNECTION_MESSAGES = [
  /^Connection terminated/i,
  /connection error and is not queryable/i,
  /Client was closed and is not queryable/i,
  /^Query read timeout/i,
  /Connection ended/i,
];
const POOL_TIMEOUT_MESSAGES = [/timeout exceeded when trying to connect/i, /^Cannot use a pool after calling end/i];

function fieldOf(err: unknown, name: string): unknown {
  return typeof err === 'object' && err !== null ? (err as Record<string, unknown>)[name] : undefined;
}

/** Classifies an error thrown by a query; undefined when it did not come from the database layer. */
export function databaseFailure(err: unknown): DatabaseFailure | undefined {
  if (err instanceof BrokerError) return undefined;
  const code = fieldOf(err, 'code');
  const message = err instanceof Error ? err.message : typeof err === 'string' ? err : '';
  if (typeof code === 'string') {
    if (SOCKET_CODES.has(code)) return { kind: 'connection', reason: `the database cannot be reached (${code})` };
    if (/^[0-9A-Z]{5}$/.test(code)) return sqlStateFailure(code);
  }
  // AggregateError from net.connect with several addresses (IPv4 and IPv6): look inside.
  const errors = fieldOf(err, 'errors');
  if (Array.isArray(errors) && errors.length > 0) {
    const inner = databaseFailure(errors[0]);
    if (inner) return inner;
  }
  if (CONNECTION_MESSAGES.some((re) => re.test(message))) return { kind: 'connection', reason: 'the connection to the database was lost' };
  if (POOL_TIMEOUT_MESSAGES.some((re) => re.test(message))) return { kind: 'pool-timeout', reason: 'no database connection became free in time' };
  return undefined;
}

/** SQLSTATE codes the broker treats specially; the first two characters name the class. */
const UNIQUE_VIOLATION = '23505';

const BY_CODE: Readonly<Record<string, DatabaseFailure>> = {
  '40001': { kind: 'conflict', reason: 'the transaction conflicted with a concurrent one (serialization failure)' },
  '40P01': { kind: 'conflict', reason: 'the transaction was chosen as a deadlock victim' },
  '55P03': { kind: 'conflict', reason: 'a row the request needs is locked' },
  '57014': { kind: 'statement-timeout', reason: 'a database statement took longer than the statement timeout' },
  '25P03': { kind: 'statement-timeout', reason: 'the transaction was idle longer than the database allows' },
  '57P01': { kind: 'connection', reason: 'the database server is shutting down' },
  '57P02': { kind: 'connection', reason: 'the database server is shutting down' },
  '57P03': { kind: 'connection', reason: 'the database server is starting up or in recovery' },
  '42501': { kind: 'privilege', reason: "the database refused the broker's role a privilege it needs" },
  '25006': { kind: 'privilege', reason: 'the database is read-only (connected to a standby?)' },
};

const BY_CLASS: Readonly<Record<string, DatabaseFailure>> = {
  '08': { kind: 'connection', reason: 'the connection to the database failed' },
  '53': { kind: 'server-resources', reason: 'the database server is out of resources (connections, memory or disk)' },
  '58': { kind: 'server-resources', reason: 'the database server hit a system error' },
};

/** A row with this key exists already. */
export function isUniqueViolation(err: unknown): boolean {
  return fieldOf(err, 'code') === UNIQUE_VIOLATION;
}

function sqlStateFailure(code: string): DatabaseFailure {
  return BY_CODE[code] ?? BY_CLASS[code.slice(0, 2)] ?? { kind: 'other', reason: `database error ${code}` };
}

/** Whether a failure means the database could not do the work, as opposed to a bug. */
export function isServerSideFailure(f: DatabaseFailure | undefined): boolean {
  return f !== undefined && f.kind !== 'other' && f.kind !== 'conflict';
}

/**
 * Raised when the connection failed while COMMIT was in flight: the change may or may not have
 * been applied. Retrying is safe only for idempotent calls (see the README).
 */
export class CommitOutcomeUnknownError extends Error {
  override readonly name = 'CommitOutcomeUnknownError';
  constructor(readonly failure: DatabaseFailure) {
    super(`${failure.reason} while committing: the outcome of this call is unknown`);
  }
}

/** The BrokerError a database failure surfaces as; undefined for errors that are not database failures. */
export function brokerErrorFor(err: unknown): BrokerError | undefined {
  if (err instanceof CommitOutcomeUnknownError) {
    return new BrokerError('unavailable', `${err.message}; check the task's state before repeating a call that is not idempotent`);
  }
  const failure = databaseFailure(err);
  if (!failure) return undefined;
  switch (failure.kind) {
    case 'conflict':
      return new BrokerError('aborted', `${failure.reason}; nothing was changed, retry the call`);
    case 'connection':
    case 'pool-timeout':
    case 'statement-timeout':
    case 'server-resources':
    case 'privilege':
      return new BrokerError('unavailable', `database unavailable: ${failure.reason}; nothing was changed, retry with backoff`);
    case 'other':
      return undefined;
  }
}
