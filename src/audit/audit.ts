/**
 * The audit trail: every event is appended in the transaction of the change it describes, to a
 * hash chain. A task's events form the chain named by its task ID; events that concern no
 * existing task (a probe of an unknown task ID, a malformed token) go to the chain of the actor
 * who caused them ("actor:<spiffe id>"), so no single chain becomes a global lock.
 *
 * Each event's hash is base64url SHA-256 over the RFC 8785 canonical JSON of the event
 * (chain, sequence number, previous hash and every recorded field), so changing, removing or
 * reordering any stored event, or dropping the newest one, breaks the check.
 */
import canonicalize from 'canonicalize';
import { createHash } from 'node:crypto';
import type { DbOrTx, Tx } from '../store/database.js';
import { eventIdOf, type AuditEventRow } from '../store/schema.js';

export type AuditEventType =
  | 'task.created'
  | 'task.create_replayed'
  | 'task.polled'
  | 'task.approved'
  | 'task.completed'
  | 'task.cancelled'
  | 'task.revoked'
  | 'task.expired'
  | 'token.issued'
  | 'token.verified'
  | 'access.denied'
  | 'admin.workload_revoked'
  | 'admin.tasks_listed'
  | 'admin.audit_read'
  | 'admin.key_rotated';

/** Who did it: the verified caller (or the broker itself, for the sweeper). */
export interface AuditActor {
  spiffeId: string;
  certThumbprint: string | null;
  requestId: string;
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
 * Appends one event to its chain inside `tx`. Locks the chain head, so appends to one chain are
 * serialized; callers that also lock a task row must lock it first (they always do: the
 * lifecycle locks the task, then writes its events).
 */
export async function appendAuditEvent(tx: Tx, input: AuditEventInput, options: AppendOptions = {}): Promise<AuditEvent> {
  const started = options.onTimed ? performance.now() : 0;
  const event = await append(tx, input);
  options.onTimed?.((performance.now() - started) / 1000);
  return event;
}

export interface AppendOptions {
  /** Told how long a successful append took, in seconds (metrics). */
  onTimed?: (seconds: number) => void;
}

async function append(tx: Tx, input: AuditEventInput): Promise<AuditEvent> {
  const chainId = chainIdFor(input);
  // One round trip creates the chain head if needed, locks it and reads it: ON CONFLICT DO
  // UPDATE takes the row lock like SELECT … FOR UPDATE and returns the current values.
  const head = await tx
    .insertInto('audit_chains')
    .values({ chain_id: chainId, last_seq: 0, last_hash: GENESIS_HASH })
    .onConflict((oc) => oc.column('chain_id').doUpdateSet({ chain_id: (eb) => eb.ref('excluded.chain_id') }))
    .returning(['last_seq', 'last_hash'])
    .executeTakeFirstOrThrow();
  // Round-trip the details through JSON so what is hashed is exactly what jsonb gives back; NUL
  // (which jsonb cannot hold, and which a caller may smuggle in, e.g. in a token header) becomes U+FFFD.
  const details = JSON.parse(JSON.stringify(input.details), (_key, value: unknown) => (typeof value === 'string' ? value.replaceAll('\u0000', '\ufffd') : value)) as Record<string, unknown>;
  const occurredAt = new Date(input.occurredAt.getTime());
  const fields: HashedFields = {
    chainId,
    seq: head.last_seq + 1,
    taskId: input.taskId,
    type: input.type,
    actorSpiffeId: input.actor.spiffeId,
    actorCertThumbprint: input.actor.certThumbprint,
    requestId: input.actor.requestId,
    occurredAt,
    details,
    prevHash: head.last_hash,
  };
  const hash = eventHash(fields);
  // A second round trip stores the event and moves the head, in one statement.
  const row = await tx
    .with('event', (db) =>
      db
        .insertInto('audit_events')
        .values({
          chain_id: chainId,
          seq: fields.seq,
          task_id: fields.taskId,
          event_type: fields.type,
          actor_spiffe_id: fields.actorSpiffeId,
          actor_cert_thumbprint: fields.actorCertThumbprint,
          request_id: fields.requestId,
          occurred_at: occurredAt,
          details: JSON.stringify(details),
          prev_hash: fields.prevHash,
          hash,
        })
        .returning('event_id'),
    )
    .updateTable('audit_chains')
    .set({ last_seq: fields.seq, last_hash: hash })
    .where('chain_id', '=', chainId)
    .returning((eb) => eb.selectFrom('event').select('event_id').as('event_id'))
    .executeTakeFirstOrThrow();
  if (row.event_id === null) throw new Error('audit: event was not stored');
  return { ...fields, eventId: eventIdOf({ event_id: row.event_id }), hash };
}

function fromRow(r: AuditEventRow): AuditEvent {
  return {
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

/** Recomputes every hash and link of a chain and compares its end with the chain head. */
export function checkChain(chainId: string, events: readonly AuditEvent[], head: { last_seq: number; last_hash: string } | undefined): ChainCheck {
  let prev = GENESIS_HASH;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const bad = (problem: string): ChainCheck => ({ ok: false, chainId, events: events.length, brokenAt: e.seq, problem });
    if (e.seq !== i + 1) return bad(`event ${i + 1} is missing (found sequence number ${e.seq})`);
    if (e.prevHash !== prev) return bad(`event ${e.seq} does not link to the event before it`);
    if (eventHash(e) !== e.hash) return bad(`event ${e.seq} was altered: its content does not match its hash`);
    prev = e.hash;
  }
  const lastSeq = events.length;
  if (!head) {
    return lastSeq === 0 ? { ok: true, chainId, events: 0 } : { ok: false, chainId, events: lastSeq, brokenAt: 1, problem: 'the chain head is missing' };
  }
  if (head.last_seq !== lastSeq || head.last_hash !== prev) {
    return { ok: false, chainId, events: lastSeq, brokenAt: lastSeq + 1, problem: `the chain head records ${head.last_seq} events but ${lastSeq} are stored: events were removed` };
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
