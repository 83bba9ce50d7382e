/**
 * IssueToken racing CompleteTask/CancelTask on 1,000 tasks, over real mTLS, on a real
 * PostgreSQL and on PGlite. Afterwards no token of any of them may verify as valid, and no
 * unrevoked token may belong to a task that left ACTIVE.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';

const TASKS = 1_000;
const CONCURRENCY = 50;
/** Calls the worker has in flight at once: four per racing task (three IssueToken and the end of the task). */
const IN_FLIGHT = CONCURRENCY * 4;
/**
 * The race needs one caller's calls to run together, which admission control deliberately
 * bounds in production (a replica runs 4 calls at once, and a caller has at most 32 in flight):
 * lifted here so every call of a batch hits the database at the same time.
 */
const ADMISSION = { maxInFlightPerCaller: IN_FLIGHT, maxActive: IN_FLIGHT, maxDatabaseQueue: IN_FLIGHT };
/**
 * Each call may wait behind the others in flight (on PGlite, one connection, all of them): on a
 * loaded machine that alone once took over 10 s, the client's default deadline. A call's deadline
 * only catches a stuck broker, so it is far above that.
 */
const CALL = { deadlineMs: 120_000 };
/**
 * The test's budget, scaled from its work: at most 8 calls per task (create, three IssueToken,
 * complete or cancel, a VerifyToken per token) at a generous 100 ms each (about 15 ms on PGlite
 * on a loaded CI machine), plus one call deadline.
 */
const TEST_TIMEOUT_MS = TASKS * 8 * 100 + CALL.deadlineMs;

async function inBatches<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

describe.each(STORES)('IssueToken racing the end of the task, %s', (kind) => {
  let t: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  beforeAll(async () => {
    t = await startTestBroker(kind, { admission: ADMISSION });
    [worker, api] = await Promise.all([t.client(WORKER), t.client(API)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it(
    `${TASKS} tasks: no token survives its task`,
    async () => {
      const indexes = Array.from({ length: TASKS }, (_, i) => i);
      const taskIds: string[] = [];
      await inBatches(indexes, IN_FLIGHT, async () => {
        const { task } = await worker.createTask({ spec: { action: 'race', audience: API, scopes: ['s'], resources: [], ttl: { seconds: 600 } } }, CALL);
        taskIds.push(task!.taskId);
      });
      expect(taskIds).toHaveLength(TASKS);

      const tokens: string[] = [];
      const outcomes = { issued: 0, refused: 0, ended: 0 };
      await inBatches(taskIds, CONCURRENCY, async (taskId) => {
        const i = taskIds.indexOf(taskId);
        const issue = () =>
          worker.issueToken({ taskId }, CALL).then(
            (r) => {
              tokens.push(r.token);
              outcomes.issued++;
            },
            (err: grpc.ServiceError) => {
              expect(err.code, err.message).toBe(grpc.status.FAILED_PRECONDITION);
              outcomes.refused++;
            },
          );
        const end = () => (i % 2 === 0 ? worker.completeTask(taskId, 'done', CALL) : worker.cancelTask(taskId, 'stop', CALL)).then(() => void outcomes.ended++);
        // The end of the task is sent between token requests, so both orders happen.
        await Promise.all([issue(), issue(), end(), issue()]);
      });
      expect(outcomes.ended).toBe(TASKS);
      expect(outcomes.issued + outcomes.refused).toBe(3 * TASKS);
      // Both sides of the race occurred.
      expect(outcomes.issued).toBeGreaterThan(0);
      expect(outcomes.refused).toBeGreaterThan(0);

      const db = t.broker.store.db;
      const live = await db
        .selectFrom('tokens')
        .innerJoin('tasks', 'tasks.task_id', 'tokens.task_id')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('tokens.revoked_at', 'is', null)
        .where('tasks.state', '!=', 'ACTIVE')
        .executeTakeFirstOrThrow();
      expect(Number(live.n)).toBe(0);
      const late = await db
        .selectFrom('tokens')
        .innerJoin('tasks', 'tasks.task_id', 'tokens.task_id')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .whereRef('tokens.issued_at', '>', 'tasks.ended_at')
        .executeTakeFirstOrThrow();
      expect(Number(late.n)).toBe(0);

      const valid: string[] = [];
      // Presented by the worker the tokens are bound to: only revocation may make them invalid.
      const presenterCertThumbprint = (await worker.whoAmI(CALL)).certThumbprint;
      await inBatches(tokens, IN_FLIGHT, async (token) => {
        const res = await api.verifyToken({ token, presenterCertThumbprint }, CALL);
        if (res.valid) valid.push(token);
        else expect(res.reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
      });
      expect(valid).toEqual([]);
      expect(tokens.length).toBe(outcomes.issued);

      for (const taskId of taskIds.slice(0, 25)) expect((await verifyTaskTrail(db, taskId)).ok).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );
});
