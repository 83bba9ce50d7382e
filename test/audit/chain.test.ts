/**
 * The audit hash chain: any change to a stored event, a removed event (middle or newest) or a
 * reordering is detected; and an event that cannot be stored fails the request it describes.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';

describe.each(STORES)('audit hash chain on %s', (kind) => {
  let t: TestBroker;
  let worker: BrokerClient;
  beforeAll(async () => {
    t = await startTestBroker(kind);
    worker = await t.client(WORKER);
  });
  afterAll(async () => {
    await t?.close();
  });

  /** A task with five events: created, polled, token issued, polled, completed. */
  async function taskWithTrail(): Promise<string> {
    const { task } = await worker.createTask({ spec: { action: 'audit.test', audience: API, scopes: ['s'], resources: ['r'] } });
    const id = task!.taskId;
    await worker.getTask(id);
    await worker.issueToken({ taskId: id });
    await worker.getTask(id);
    await worker.completeTask(id, 'ok');
    const check = await verifyTaskTrail(t.broker.store.db, id);
    expect(check).toMatchObject({ ok: true, events: 5 });
    expect(check.trail.map((e) => e.type)).toEqual(['task.created', 'task.polled', 'token.issued', 'task.polled', 'task.completed']);
    expect(check.trail[1]?.prevHash).toBe(check.trail[0]?.hash);
    return id;
  }

  const db = () => t.broker.store.db;

  it('detects a changed detail', async () => {
    const id = await taskWithTrail();
    await db()
      .updateTable('audit_events')
      .set({ details: JSON.stringify({ outcome: 'forged' }) })
      .where('chain_id', '=', id)
      .where('seq', '=', 5)
      .execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, brokenAt: 5, problem: expect.stringMatching(/altered/) });
  });

  it('detects a changed actor, even when the attacker recomputes nothing', async () => {
    const id = await taskWithTrail();
    await db().updateTable('audit_events').set({ actor_spiffe_id: 'spiffe://a.test/someone-else' }).where('chain_id', '=', id).where('seq', '=', 1).execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, brokenAt: 1 });
  });

  it('detects a changed time', async () => {
    const id = await taskWithTrail();
    await db()
      .updateTable('audit_events')
      .set({ occurred_at: new Date('2020-01-01T00:00:00Z') })
      .where('chain_id', '=', id)
      .where('seq', '=', 3)
      .execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, brokenAt: 3 });
  });

  it('detects a removed event in the middle', async () => {
    const id = await taskWithTrail();
    await db().deleteFrom('audit_events').where('chain_id', '=', id).where('seq', '=', 3).execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, brokenAt: 4, problem: expect.stringMatching(/missing/) });
  });

  it('detects a removed newest event through the chain head', async () => {
    const id = await taskWithTrail();
    await db().deleteFrom('audit_events').where('chain_id', '=', id).where('seq', '=', 5).execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, problem: expect.stringMatching(/events were removed/) });
  });

  it('detects an event rewritten with a recomputed hash, because the next event links to the old one', async () => {
    const id = await taskWithTrail();
    const { trail } = await verifyTaskTrail(db(), id);
    expect(trail[1]!.hashVersion).toBe(2);
    // The forger recomputes the hash of the rewritten event the way the database does (format 2).
    await db()
      .updateTable('audit_events')
      .set({ details: JSON.stringify({ state: 'forged' }) })
      .where('chain_id', '=', id)
      .where('seq', '=', 2)
      .execute();
    await sql`update audit_events set hash = tb_b64url(sha256(convert_to(tb_event_document(chain_id, seq, task_id, event_type, actor_spiffe_id, actor_cert_thumbprint, request_id, occurred_at, details, prev_hash), 'UTF8')))
      where chain_id = ${id} and seq = 2`.execute(db());
    const forged = await verifyTaskTrail(db(), id);
    expect(forged.trail[1]!.details).toEqual({ state: 'forged' });
    expect(forged).toMatchObject({ ok: false, brokenAt: 3, problem: expect.stringMatching(/does not link/) });
  });

  it('detects a task whose whole trail was deleted, head included', async () => {
    const id = await taskWithTrail();
    await db().deleteFrom('audit_events').where('chain_id', '=', id).execute();
    await db().deleteFrom('audit_chains').where('chain_id', '=', id).execute();
    expect(await verifyTaskTrail(db(), id)).toMatchObject({ ok: false, problem: expect.stringMatching(/trail is missing/) });
  });

  it('a check running while events are appended never reports tampering', async () => {
    const { task } = await worker.createTask({ spec: { action: 'audit.test', audience: API, scopes: ['s'], resources: [] } });
    const id = task!.taskId;
    let polling = true;
    const poller = (async () => {
      while (polling) await worker.getTask(id);
    })();
    try {
      for (let i = 0; i < 30; i++) expect((await verifyTaskTrail(db(), id)).ok).toBe(true);
    } finally {
      polling = false;
      await poller;
    }
  });

  it('a chain begun in format 1 (hashed by the broker, before migration 0003) continues in format 2 and verifies; tampering with either is detected', async () => {
    const { eventHash, GENESIS_HASH, appendAuditEvent, verifyChain } = await import('../../src/audit/audit.js');
    const chainId = `actor:spiffe://a.test/legacy-${Date.now()}`;
    // Two events as an older broker wrote them: RFC 8785 over the fields, computed in JS.
    let prev = GENESIS_HASH;
    for (const seq of [1, 2]) {
      const fields = {
        chainId,
        seq,
        taskId: null,
        type: 'access.denied',
        actorSpiffeId: chainId.slice('actor:'.length),
        actorCertThumbprint: 'thumb',
        requestId: `legacy-${seq}`,
        occurredAt: new Date(Date.UTC(2026, 0, seq, 12, 0, 0, 123)),
        details: { operation: 'GetTask', reason: 'no such task', n: seq, ünï: ['😀', 1.5] },
        prevHash: prev,
      };
      const hash = eventHash(fields);
      await db()
        .insertInto('audit_events')
        .values({
          chain_id: chainId,
          seq,
          task_id: null,
          event_type: fields.type,
          actor_spiffe_id: fields.actorSpiffeId,
          actor_cert_thumbprint: fields.actorCertThumbprint,
          request_id: fields.requestId,
          occurred_at: fields.occurredAt,
          details: JSON.stringify(fields.details),
          prev_hash: prev,
          hash,
        })
        .execute();
      prev = hash;
    }
    await db().insertInto('audit_chains').values({ chain_id: chainId, last_seq: 2, last_hash: prev }).execute();
    // The current broker appends in format 2 after them.
    await t.broker.store.transaction((tx) =>
      appendAuditEvent(tx, {
        taskId: null,
        type: 'access.denied',
        actor: { spiffeId: chainId.slice('actor:'.length), certThumbprint: null, requestId: 'now' },
        occurredAt: new Date(),
        details: { reason: 'x' },
      }),
    );
    const check = await verifyChain(db(), chainId);
    expect(check).toMatchObject({ ok: true, events: 3 });
    expect(check.trail.map((e) => e.hashVersion)).toEqual([1, 1, 2]);
    expect(check.trail[2]!.prevHash).toBe(prev);

    const original = check.trail[0]!.details;
    await db()
      .updateTable('audit_events')
      .set({ details: JSON.stringify({ ...original, reason: 'forged' }) })
      .where('chain_id', '=', chainId)
      .where('seq', '=', 1)
      .execute();
    expect(await verifyChain(db(), chainId)).toMatchObject({ ok: false, brokenAt: 1 });
    await db()
      .updateTable('audit_events')
      .set({ details: JSON.stringify(original) })
      .where('chain_id', '=', chainId)
      .where('seq', '=', 1)
      .execute();
    expect(await verifyChain(db(), chainId)).toMatchObject({ ok: true, events: 3 });
    await db().updateTable('audit_events').set({ request_id: 'forged' }).where('chain_id', '=', chainId).where('seq', '=', 3).execute();
    expect(await verifyChain(db(), chainId)).toMatchObject({ ok: false, brokenAt: 3 });
  });

  it('detects two events swapped', async () => {
    const id = await taskWithTrail();
    await db()
      .transaction()
      .execute(async (tx) => {
        await tx.updateTable('audit_events').set({ seq: 100 }).where('chain_id', '=', id).where('seq', '=', 2).execute();
        await tx.updateTable('audit_events').set({ seq: 2 }).where('chain_id', '=', id).where('seq', '=', 4).execute();
        await tx.updateTable('audit_events').set({ seq: 4 }).where('chain_id', '=', id).where('seq', '=', 100).execute();
      });
    expect((await verifyTaskTrail(db(), id)).ok).toBe(false);
  });

  it('fails closed: when the audit event cannot be stored, the change is not made and the call fails', async () => {
    const before = await db()
      .selectFrom('tasks')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .executeTakeFirstOrThrow();
    await sql`alter table audit_events add constraint audit_unwritable check (false) not valid`.execute(db());
    try {
      const create = worker.createTask({ spec: { action: 'audit.test', audience: API, scopes: ['s'], resources: [] } });
      await expect(create).rejects.toMatchObject({ code: grpc.status.INTERNAL });
      const after = await db()
        .selectFrom('tasks')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .executeTakeFirstOrThrow();
      expect(Number(after.n)).toBe(Number(before.n));
    } finally {
      await sql`alter table audit_events drop constraint audit_unwritable`.execute(db());
    }
  });
});
