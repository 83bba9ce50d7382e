/**
 * The audit trail: every event is appended in the transaction of the change it describes, to a
 * hash chain. A task's events form the chain named by its task ID; events that concern no
 * existing task (a probe of an unknown task ID, a malformed token) go to the chain of the actor
 * who caused them ("actor:<spiffe id>"), so no single chain becomes a global lock.
 *
 * Each event's hash is base64url SHA-256 over a document that holds the chain, the sequence
 * number, the previous hash and every recorded field, so changing, removing or reordering any
 * stored event, or dropping the newest one, breaks the check. Two formats exist (column
 * hash_version): 1, the RFC 8785 canonical JSON of the event, computed by the broker (events
 * written before migration 0003); 2, the jsonb text of a JSON array of the same fields, computed
 * by the database in the statement that appends the event (tb_event_document in
 * migrations/0003), so an append needs no round trip to read the chain head first.
 */
import canonicalize from 'canonicalize';
import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import type { DbOrTx, Tx } from '../store/database.js';
import { eventIdOf, type AuditEventRow } from '../store/schema.js';
import { storableJson } from '../store/write-batcher.js';

export type AuditEventType =
  | 'task.created'
  | 'task.create_replayed'
  | 'task.polled'
  | 'task.result_read'
  | 'task.read_by_delegator'
  | 'task.delegated'
  | 'tasks.listed'
  | 'task.approved'
  | 'task.completed'
  | 'task.cancelled'
  | 'task.revoked'
  | 'task.expired'
  | 'token.issued'
  | 'token.verified'
  | 'token.used'
  | 'access.denied'
  | 'admin.workload_revoked'
  | 'admin.tasks_listed'
  | 'admin.audit_read'
  | 'admin.task_read'
  | 'admin.workload_revoke_dry_run'
  | 'admin.tree_read'
  | 'admin.key_rotated'
  | 'admin.signing_keys_listed';

/** Who did it: the verified caller (or the broker itself, for the sweeper). */
export interface AuditActor {
  spiffeId: string;
  certThumbprint: string | null;
  requestId: string;
  /** The W3C trace id of the call, when it has one: recorded as details.trace_id (covered by the hash). */
  traceId?: string;
}

export interface AuditEventInput {
  /** The task the event is about, when it exists. */
  taskId: string | null;
  type: AuditEventType;
  actor: AuditActor;
  occurredAt: Date;
  details: Record<string, unknown>;
}

export const GENESIS_HASH = '';

export function chainIdFor(input: Pick<AuditEventInput, 'taskId' | 'actor'>): string {
  return input.taskId ?? `actor:${input.actor.spiffeId}`;
}

/** The fields an event's hash covers. */
export interface HashedFields {
  chainId: string;
  seq: number;
  taskId: string | null;
  type: string;
  actorSpiffeId: string;
  actorCertThumbprint: string | null;
  requestId: string;
  occurredAt: Date;
  details: Record<string, unknown>;
  prevHash: string;
}

export interface AuditEvent extends HashedFields {
  eventId: number;
  hash: string;
  /** 1: RFC 8785 document computed by the broker; 2: document computed by the database. */
  hashVersion: 1 | 2;
  /** Format 2: the document the hash covers, as the database renders it from the stored fields. */
  document?: string;
}

export function eventHash(e: HashedFields): string {
  const document = canonicalize({
    chain_id: e.chainId,
    seq: e.seq,
    task_id: e.taskId,
    event_type: e.type,
    actor_spiffe_id: e.actorSpiffeId,
    actor_cert_thumbprint: e.actorCertThumbprint,
    request_id: e.requestId,
    occurred_at: e.occurredAt.toISOString(),
    details: e.details,
    prev_hash: e.prevHash,
  });
  if (document === undefined) throw new Error('audit: event cannot be canonicalized');
  return createHash('sha256').update(document, 'utf8').digest('base64url');
}

/**
 * Appends one event to its chain inside `tx`, in one round trip (tb_append_event: locks the chain
 * head, computes the hash, stores the event, moves the head). Appends to one chain are
 * serialized; callers that also lock a task row must lock it first (they always do).
 */
export async function appendAuditEvent(tx: Tx, input: AuditEventInput, options: AppendOptions = {}): Promise<number> {
  const started = options.onTimed ? performance.now() : 0;
  const traceId = input.actor.traceId;
  const details = JSON.stringify(traceId ? { ...input.details, trace_id: traceId } : input.details);
  const { rows } = await sql<{
    event_id: string | number;
  }>`select tb_append_event(${input.taskId}, ${input.type}, ${input.actor.spiffeId}, ${input.actor.certThumbprint}, ${input.actor.requestId}, ${input.occurredAt}, ${storableJson(details)}::jsonb) as event_id`.execute(
    tx,
  );
  options.onTimed?.((performance.now() - started) / 1000);
  return eventIdOf(rows[0]!);
}

export interface AppendOptions {
  /** Told how long a successful append took, in seconds (metrics). */
  onTimed?: (seconds: number) => void;
}

function fromRow(r: AuditEventRow & { document: string | null }): AuditEvent {
  return {
    hashVersion: r.hash_version === 2 ? 2 : 1,
    ...(r.document !== null ? { document: r.document } : {}),
    eventId: eventIdOf(r),
    chainId: r.chain_id,
    seq: r.seq,
    taskId: r.task_id,
    type: r.event_type,
    actorSpiffeId: r.actor_spiffe_id,
    actorCertThumbprint: r.actor_cert_thumbprint,
    requestId: r.request_id,
    occurredAt: r.occurred_at,
    details: r.details,
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

export interface ChainCheck {
  ok: boolean;
  chainId: string;
  events: number;
  /** The first sequence number at which the chain breaks, and why. */
  brokenAt?: number;
  problem?: string;
}

/** An event's hash recomputed from its stored fields (undefined: format 2 without its document). */
function hashOf(e: AuditEvent): string | undefined {
  if (e.hashVersion === 1) return eventHash(e);
  return e.document === undefined ? undefined : createHash('sha256').update(e.document, 'utf8').digest('base64url');
}

/** Recomputes every hash and link of a chain and compares its end with the chain head. */
export function checkChain(chainId: string, events: readonly AuditEvent[], head: { last_seq: number; last_hash: string } | undefined): ChainCheck {
  let prev = GENESIS_HASH;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const bad = (problem: string): ChainCheck => ({ ok: false, chainId, events: events.length, brokenAt: e.seq, problem });
    if (e.seq !== i + 1) return bad(`event ${i + 1} is missing (found sequence number ${e.seq})`);
    if (e.prevHash !== prev) return bad(`event ${e.seq} does not link to the event before it`);
    if (hashOf(e) !== e.hash) return bad(`event ${e.seq} was altered: its content does not match its hash`);
    prev = e.hash;
  }
  const lastSeq = events.length;
  if (!head) {
    return lastSeq === 0 ? { ok: true, chainId, events: 0 } : { ok: false, chainId, events: lastSeq, brokenAt: 1, problem: 'the chain head is missing' };
  }
  if (head.last_seq !== lastSeq || head.last_hash !== prev) {
    return {
      ok: false,
      chainId,
      events: lastSeq,
      brokenAt: lastSeq + 1,
      problem: `the chain head records ${head.last_seq} events but ${lastSeq} are stored: events were removed`,
    };
  }
  return { ok: true, chainId, events: lastSeq };
}

export async function verifyChain(db: DbOrTx, chainId: string): Promise<ChainCheck & { trail: AuditEvent[] }> {
  // The head first, then the events up to it: appends that commit in between are not part of
  // this check (they extend the chain beyond the head we read) and cannot look like tampering.
  const head = await db.selectFrom('audit_chains').select(['last_seq', 'last_hash']).where('chain_id', '=', chainId).executeTakeFirst();
  const rows = await db
    .selectFrom('audit_events')
    .selectAll()
    .select(
      sql<
        string | null
      >`case when hash_version = 2 then tb_event_document(chain_id, seq, task_id, event_type, actor_spiffe_id, actor_cert_thumbprint, request_id, occurred_at, details, prev_hash) end`.as(
        'document',
      ),
    )
    .where('chain_id', '=', chainId)
    .where('seq', '<=', head?.last_seq ?? 0)
    .orderBy('seq')
    .execute();
  const trail = rows.map(fromRow);
  return { ...checkChain(chainId, trail, head), trail };
}

/**
 * The audit trail of a task with its chain check. Every task has at least its creation event,
 * so a task whose chain is empty has lost its trail, and that is reported too.
 */
export async function verifyTaskTrail(db: DbOrTx, taskId: string): Promise<ChainCheck & { trail: AuditEvent[] }> {
  const result = await verifyChain(db, taskId);
  if (result.ok && result.events === 0) {
    const task = await db.selectFrom('tasks').select('task_id').where('task_id', '=', taskId).executeTakeFirst();
    if (task) return { ...result, ok: false, brokenAt: 1, problem: 'the task exists but its audit trail is missing' };
  }
  return result;
}
