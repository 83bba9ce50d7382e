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

async function inBatches<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

describe.each(STORES)('IssueToken racing the end of the task, %s', (kind) => {
  let t: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  beforeAll(async () => {
    t = await startTestBroker(kind);
    [worker, api] = await Promise.all([t.client(WORKER), t.client(API)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  it(`${TASKS} tasks: no token survives its task`, async () => {
    const indexes = Array.from({ length: TASKS }, (_, i) => i);
    const taskIds: string[] = [];
    await inBatches(indexes, CONCURRENCY, async () => {
      const { task } = await worker.createTask({ spec: { action: 'race', audience: API, scopes: ['s'], resources: [], ttl: { seconds: 600 } } });
      taskIds.push(task!.taskId);
    });
    expect(taskIds).toHaveLength(TASKS);

    const tokens: string[] = [];
    const outcomes = { issued: 0, refused: 0, ended: 0 };
    await inBatches(taskIds, CONCURRENCY, async (taskId) => {
      const i = taskIds.indexOf(taskId);
      const issue = () =>
        worker.issueToken({ taskId }).then(
          (r) => {
            tokens.push(r.token);
            outcomes.issued++;
          },
          (err: grpc.ServiceError) => {
            expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
            outcomes.refused++;
          },
        );
      const end = () => (i % 2 === 0 ? worker.completeTask(taskId, 'done') : worker.cancelTask(taskId, 'stop')).then(() => void outcomes.ended++);
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
    await inBatches(tokens, CONCURRENCY, async (token) => {
      const res = await api.verifyToken({ token });
      if (res.valid) valid.push(token);
      else expect(res.reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    });
    expect(valid).toEqual([]);
    expect(tokens.length).toBe(outcomes.issued);

    for (const taskId of taskIds.slice(0, 25)) expect((await verifyTaskTrail(db, taskId)).ok).toBe(true);
  }, 300_000);
});
