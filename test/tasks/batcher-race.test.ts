/**
 * Group commit under a race: 2,000 concurrent mixed calls share batches, with failures injected
 * into some of them (policy denials, a stranger's probes, scopes the task lacks, an insert the
 * database rejects with a unique violation, and on PostgreSQL the broker's connections killed
 * mid-run). Every acknowledged call's effect and audit event is in the database, no refused call
 * left anything but its denial event, no token survives its task, and every chain verifies.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyChain, verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { StaticPolicySource } from '../../src/policy/policy-source.js';
import { adminQuery, STORES } from '../helpers/db.js';
import { API, startTestBroker, STRANGER, WORKER, type TestBroker } from '../helpers/broker.js';
import { policyOf } from '../helpers/policy.js';

const POLICY = `
version: 1
rules:
  - name: race
    callers:
      trust_domains: [a.test]
    actions: ["race", "poison"]
    audiences: ["${API}"]
    scopes: ["s", "t"]
`;

const TASKS = 112;
const CLIENTS = 16;
const CALL = { deadlineMs: 120_000 };
const spec = (action: string) => ({ spec: { action, audience: API, scopes: ['s', 't'], resources: [], ttl: { seconds: 600 } } });

type Outcome = { kind: string; taskId?: string; code: grpc.status; tokenId?: string; createdId?: string };

const codeOf = (err: unknown): grpc.status => (err as grpc.ServiceError).code ?? grpc.status.UNKNOWN;

describe.each(STORES)('group commit race on %s', (kind) => {
  let t: TestBroker;
  let workers: BrokerClient[];
  let stranger: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, {
      policy: new StaticPolicySource(policyOf(POLICY)),
      admission: { maxInFlightPerCaller: 10_000, maxInFlight: 20_000, maxDatabaseQueue: 20_000, maxActive: 256 },
    });
    workers = [];
    for (let i = 0; i < CLIENTS; i++) workers.push(await t.client(WORKER));
    stranger = await t.client(STRANGER);
    api = await t.client(API);
    // The database rejects every task whose action is "poison", as a unique violation would.
    await sql
      .raw(
        `create function poison_tasks() returns trigger language plpgsql as $$ begin
           if new.action = 'poison' then raise exception 'injected failure' using errcode = 'unique_violation'; end if;
           return new; end $$`,
      )
      .execute(t.broker.store.db);
    await sql.raw('create trigger poison_tasks before insert on tasks for each row execute function poison_tasks()').execute(t.broker.store.db);
  }, 120_000);

  afterAll(async () => {
    await t?.close();
  });

  it('2000 concurrent mixed calls: acknowledged effects and their events are stored, refusals leave nothing, chains verify', { timeout: 300_000 }, async () => {
    const thumbprints = await Promise.all(workers.map(async (w) => (await w.whoAmI()).certThumbprint));
    const tasks: Array<{ taskId: string; token: string }> = [];
    for (let i = 0; i < TASKS; i++) {
      const w = workers[i % CLIENTS]!;
      const taskId = (await w.createTask(spec('race'), CALL)).task!.taskId;
      tasks.push({ taskId, token: (await w.issueToken({ taskId, scopes: ['s'] }, CALL)).token });
    }

    const outcomes: Outcome[] = [];
    const run = async (kind: string, taskId: string | undefined, fn: () => Promise<Partial<Outcome>>) => {
      try {
        outcomes.push({ kind, taskId, code: grpc.status.OK, ...(await fn()) });
      } catch (err) {
        outcomes.push({ kind, taskId, code: codeOf(err) });
      }
    };
    const calls: Array<() => Promise<void>> = [];
    tasks.forEach(({ taskId, token }, i) => {
      const w = workers[i % CLIENTS]!;
      for (let k = 0; k < 4; k++) calls.push(() => run('issue', taskId, async () => ({ tokenId: (await w.issueToken({ taskId }, CALL)).tokenId })));
      for (let k = 0; k < 2; k++)
        calls.push(() => run('issue-extra-scope', taskId, async () => ({ tokenId: (await w.issueToken({ taskId, scopes: ['u'] }, CALL)).tokenId })));
      for (let k = 0; k < 3; k++) calls.push(() => run('get', taskId, async () => (await w.getTask(taskId, CALL), {})));
      calls.push(() => run('stranger-get', taskId, async () => (await stranger.getTask(taskId, CALL), {})));
      for (let k = 0; k < 4; k++) {
        calls.push(() =>
          run('verify', taskId, async () => {
            const res = await api.verifyToken({ token, presenterCertThumbprint: thumbprints[i % CLIENTS] }, CALL);
            return { code: res.valid ? grpc.status.OK : grpc.status.FAILED_PRECONDITION };
          }),
        );
      }
      calls.push(() =>
        run(
          i % 2 === 0 ? 'complete' : 'cancel',
          taskId,
          async () => (i % 2 === 0 ? await w.completeTask(taskId, 'done', CALL) : await w.cancelTask(taskId, 'stop', CALL), {}),
        ),
      );
      calls.push(() =>
        run('create', undefined, async () => ({ createdId: (await w.createTask({ ...spec('race'), idempotencyKey: `key-${i % 8}` }, CALL)).task!.taskId })),
      );
      calls.push(() => run('create-forbidden', undefined, async () => ({ createdId: (await w.createTask(spec('forbidden'), CALL)).task!.taskId })));
      calls.push(() => run('create-poison', undefined, async () => ({ createdId: (await w.createTask(spec('poison'), CALL)).task!.taskId })));
    });
    expect(calls.length).toBeGreaterThanOrEqual(2000);
    // Shuffle deterministically, so every batch mixes kinds and tasks.
    for (let i = calls.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [calls[i], calls[j]] = [calls[j]!, calls[i]!];
    }
    // On PostgreSQL the broker's connections are killed three times while batches are in flight.
    const kills = kind === 'postgres' ? [0.25, 0.5, 0.75].map((f) => Math.floor(calls.length * f)) : [];
    let killed = 0;
    const killer = async () => {
      while (kills.length > 0) {
        if (outcomes.length >= kills[0]! && (t.broker.store.poolStats().total > t.broker.store.poolStats().idle || outcomes.length === calls.length)) {
          kills.shift();
          const database = new URL(t.database.url!).pathname.slice(1);
          await adminQuery(`select pg_terminate_backend(pid) from pg_stat_activity where datname = '${database}' and application_name = 'task-broker'`);
          killed += 1;
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await Promise.all([killer(), ...calls.map((call) => call())]);
    if (kind === 'postgres') expect(killed).toBe(3);
    console.log(
      `batcher race on ${kind}: ${outcomes.filter((o) => o.code === grpc.status.UNAVAILABLE).length} calls UNAVAILABLE after ${killed} connection kills`,
    );
    expect(outcomes).toHaveLength(calls.length);

    const count = (k: string, code: grpc.status) => outcomes.filter((o) => o.kind === k && o.code === code).length;
    const codes = (k: string) => [...new Set(outcomes.filter((o) => o.kind === k).map((o) => grpc.status[o.code] ?? String(o.code)))].sort();
    // Each kind ends only the ways it may; UNAVAILABLE only where connections were killed.
    const unavailable = kind === 'postgres' ? ['UNAVAILABLE'] : [];
    const within = (k: string, list: string[]) =>
      expect(
        codes(k).every((c) => [...list, ...unavailable].includes(c)),
        `${k}: ${codes(k).join(', ')}`,
      ).toBe(true);
    within('issue', ['OK', 'FAILED_PRECONDITION']);
    within('issue-extra-scope', ['PERMISSION_DENIED', 'FAILED_PRECONDITION']);
    within('get', ['OK']);
    within('stranger-get', ['NOT_FOUND']);
    within('verify', ['OK', 'FAILED_PRECONDITION']);
    within('complete', ['OK']);
    within('cancel', ['OK']);
    within('create', ['OK']);
    within('create-forbidden', ['PERMISSION_DENIED']);
    within('create-poison', ['INTERNAL']);
    expect(count('create-poison', grpc.status.INTERNAL) + count('create-poison', grpc.status.UNAVAILABLE)).toBe(TASKS);
    expect(count('issue', grpc.status.OK)).toBeGreaterThan(0);

    const db = t.broker.store.db;
    // No refused create left a task; the idempotent creates made at most one task per key.
    const actions = await db.selectFrom('tasks').select(['action', 'idempotency_key']).execute();
    expect(actions.filter((r) => r.action !== 'race')).toEqual([]);
    const keyed = outcomes.filter((o) => o.kind === 'create' && o.code === grpc.status.OK);
    expect(new Set(keyed.map((o) => o.createdId)).size).toBeLessThanOrEqual(8);
    expect(actions.filter((r) => r.idempotency_key !== null).length).toBeLessThanOrEqual(8);

    for (const { taskId } of tasks) {
      const mine = outcomes.filter((o) => o.taskId === taskId);
      const issuedOk = mine.filter((o) => o.kind === 'issue' && o.code === grpc.status.OK).map((o) => o.tokenId!);
      const issuedUnknown = mine.filter((o) => o.kind.startsWith('issue') && o.code === grpc.status.UNAVAILABLE).length;
      const tokens = await db.selectFrom('tokens').select(['jti', 'revoked_at']).where('task_id', '=', taskId).execute();
      const jtis = new Set(tokens.map((r) => r.jti));
      // Every acknowledged token is stored; refused ones left nothing (beyond calls whose outcome is unknown).
      expect(issuedOk.filter((id) => !jtis.has(id))).toEqual([]);
      expect(tokens.length - 1 - issuedOk.length).toBeGreaterThanOrEqual(0);
      expect(tokens.length - 1 - issuedOk.length).toBeLessThanOrEqual(issuedUnknown);
      const events = await db.selectFrom('audit_events').select(['event_type', 'details']).where('chain_id', '=', taskId).execute();
      const issuedEvents = new Set(events.filter((e) => e.event_type === 'token.issued').map((e) => e.details.token_id as string));
      expect([...jtis].filter((id) => !issuedEvents.has(id))).toEqual([]);
      expect(issuedEvents.size).toBe(tokens.length);

      const ended = mine.find((o) => o.kind === 'complete' || o.kind === 'cancel')!;
      const task = await db.selectFrom('tasks').select('state').where('task_id', '=', taskId).executeTakeFirstOrThrow();
      if (ended.code === grpc.status.OK) {
        expect(task.state).toBe(ended.kind === 'complete' ? 'COMPLETED' : 'CANCELLED');
        expect(events.filter((e) => e.event_type === (ended.kind === 'complete' ? 'task.completed' : 'task.cancelled'))).toHaveLength(1);
      }
      // No token survives its task.
      if (task.state !== 'ACTIVE') expect(tokens.filter((r) => r.revoked_at === null)).toEqual([]);
      const trail = await verifyTaskTrail(db, taskId);
      expect(trail, `chain of ${taskId}`).toMatchObject({ ok: true });
    }
    // The stranger's and the denied creators' chains verify too.
    for (const actor of [STRANGER, WORKER]) expect(await verifyChain(db, `actor:${actor}`)).toMatchObject({ ok: true });
    console.log(
      `batcher race on ${kind}:`,
      Object.fromEntries(
        ['issue', 'issue-extra-scope', 'get', 'stranger-get', 'verify', 'complete', 'cancel', 'create', 'create-forbidden', 'create-poison'].map((k) => [
          k,
          codes(k).join('/'),
        ]),
      ),
    );
  });
});
