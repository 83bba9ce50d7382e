/**
 * The database as kysely sees it. Column types follow migrations/; `Generated` marks columns
 * the database fills in.
 */
import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely';
import type { TaskState } from '../model/task.js';

/** jsonb: written as a JSON string, read back parsed. */
export type Json<T> = ColumnType<T, string, string>;

export interface TasksTable {
  task_id: string;
  owner_spiffe_id: string;
  owner_trust_domain: string;
  spec: Json<unknown>;
  task_hash: string;
  action: string;
  audience: string;
  scopes: Json<string[]>;
  ttl_seconds: number;
  state: TaskState;
  idempotency_key: string | null;
  owner_cert_thumbprint: string;
  created_at: Date;
  expires_at: Date;
  ended_at: Date | null;
  ended_by: string | null;
  end_reason: string | null;
  approved_by: ColumnType<string | null, string | null | undefined, string | null>;
  approved_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  approval_comment: ColumnType<string | null, string | null | undefined, string | null>;
  policy_rule: ColumnType<string | null, string | null | undefined, string | null>;
  /** Delegation (migrations/0005): parent and root are null for a root task, whose depth is 0. */
  parent_task_id: ColumnType<string | null, string | null | undefined, never>;
  root_task_id: ColumnType<string | null, string | null | undefined, never>;
  depth: ColumnType<number, number | undefined, never>;
  /** The delegators, most recent first. */
  delegators: ColumnType<string[], string | undefined, never>;
  /** {iss, sub, sid?} of the subject token the task was created with. */
  principal: ColumnType<PrincipalJson | null, string | null | undefined, never>;
  /** The verified subject token's claims, for request-time policy. */
  principal_claims: ColumnType<Record<string, unknown> | null, string | null | undefined, never>;
  /** {iss, sub, sid?} of who approved, when the rule names approvers by claim. */
  approver: ColumnType<PrincipalJson | null, string | null | undefined, string | null>;
  /** Set once something was delegated from the task: only then does its end look for descendants. */
  has_delegated: ColumnType<boolean, boolean | undefined, never>;
  /** The workload that created the task for its requester and serves it (migrations/0006); null otherwise. */
  gateway: ColumnType<string | null, string | null | undefined, never>;
  /** Null: no result stored; else whether the stored result (task_results) is a failure. */
  result_failed: ColumnType<boolean | null, boolean | null | undefined, boolean | null>;
}

/** A principal as the tasks table stores it. */
export interface PrincipalJson {
  iss: string;
  sub: string;
  sid?: string;
}

/** NEXT: published, never signs (until activates_at); ACTIVE: signs; RETIRED: published until publish_until (migrations/0008). */
export type SigningKeyState = 'NEXT' | 'ACTIVE' | 'RETIRED';

export interface SigningKeysTable {
  kid: string;
  alg: string;
  public_jwk: Json<Record<string, unknown>>;
  private_key_ciphertext: Buffer | Uint8Array;
  kek_id: string;
  state: SigningKeyState;
  created_at: Date;
  /** NEXT: when it becomes ACTIVE; ACTIVE and RETIRED: when it did. */
  activates_at: Date;
  retired_at: Date | null;
  publish_until: Date | null;
}

/** A task's stored result (migrations/0006), handed out while retained. */
export interface TaskResultsTable {
  task_id: string;
  result: string;
  failed: boolean;
  stored_at: Date;
  retain_until: Date;
}

export interface TokensTable {
  jti: string;
  task_id: string;
  kid: string;
  subject: string;
  audience: string;
  scopes: Json<string[]>;
  cnf_thumbprint: string;
  issued_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
  revoke_reason: string | null;
  /** Use-limited tokens (migrations/0005): accepted at most max_uses times by VerifyToken. */
  max_uses: ColumnType<number | null, number | null | undefined, never>;
  uses: ColumnType<number, number | undefined, number>;
}

export interface AuditChainsTable {
  chain_id: string;
  last_seq: number;
  last_hash: string;
  /** The principal of the chain's task (migrations/0005), added to each event's details. */
  principal: ColumnType<PrincipalJson | null, string | null | undefined, never>;
}

export interface AuditEventsTable {
  /** bigint: a string from `pg`, a number from PGlite; use eventIdOf() to read it. */
  event_id: ColumnType<string | number, never, never>;
  chain_id: string;
  seq: number;
  task_id: string | null;
  event_type: string;
  actor_spiffe_id: string;
  actor_cert_thumbprint: string | null;
  request_id: string;
  occurred_at: Date;
  details: Json<Record<string, unknown>>;
  prev_hash: string;
  hash: string;
  /** 1: RFC 8785 document hashed by the broker; 2: document rendered and hashed by the database. */
  hash_version: ColumnType<number, number | undefined, never>;
}

export interface RevocationsTable {
  /** bigint: a string from `pg`, a number from PGlite. */
  revocation_id: ColumnType<string | number, never, never>;
  /** Commit order (bigint); null only inside the inserting transaction. */
  seq: ColumnType<string | number | null, never, never>;
  task_id: string;
  audience: string;
  task_state: TaskState;
  reason: string;
  revoked_at: Date;
  revoked_tokens: number;
  tokens_expire_by: Date;
}

export interface TokenUseReportsTable {
  reporter: string;
  report_id: string;
  task_id: string;
  received_at: Date;
}

export interface SchemaMigrationsTable {
  version: string;
  checksum: string;
  applied_at: Generated<Date>;
}

export interface Schema {
  tasks: TasksTable;
  task_results: TaskResultsTable;
  signing_keys: SigningKeysTable;
  tokens: TokensTable;
  audit_chains: AuditChainsTable;
  audit_events: AuditEventsTable;
  revocations: RevocationsTable;
  token_use_reports: TokenUseReportsTable;
  broker_instance: { singleton: ColumnType<boolean, never, never>; instance_id: string };
  revocation_log_head: { singleton: ColumnType<boolean, never, never>; last_seq: ColumnType<string | number, never, never> };
  schema_migrations: SchemaMigrationsTable;
}

export type TaskRow = Selectable<TasksTable>;
export type NewTaskRow = Insertable<TasksTable>;
export type TaskUpdate = Updateable<TasksTable>;
export type TokenRow = Selectable<TokensTable>;
export type SigningKeyRow = Selectable<SigningKeysTable>;
export type AuditEventRow = Selectable<AuditEventsTable>;

export function eventIdOf(row: { event_id: string | number }): number {
  return Number(row.event_id);
}
