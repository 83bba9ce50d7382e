/**
 * One round trip per RPC: each of CreateTask, GetTask, IssueToken, VerifyToken, CompleteTask, DelegateTask and
 * CancelTask sends exactly one statement to the database (tb_apply, see
 * migrations/0003_one_round_trip.sql), counted at the driver, so a change that adds a query to
 * the hot path fails here. The one exception is stated: a task this replica has not seen yet
 * costs one read of its immutable facts, once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { STORES } from '../helpers/db.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';

const spec = { action: 'invoice.export', audience: API, scopes: ['invoices:read'], resources: ['s3://invoices/2026'] };

describe.each(STORES)('statements per RPC on %s', (kind) => {
  let t: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    // No sweeper, no periodic readiness: nothing else talks to the database during a call.
    t = await startTestBroker(kind, { readinessIntervalMs: 3_600_000 });
    worker = await t.client(WORKER);
    api = await t.client(API);
    // Warm up: keys loaded, prepared statements parsed, connections open.
    const { task } = await worker.createTask({ spec });
    const issued = await worker.issueToken({ taskId: task!.taskId });
    await api.verifyToken({ token: issued.token, presenterCertThumbprint: (await worker.whoAmI()).certThumbprint });
    await worker.completeTask(task!.taskId, 'warm-up');
  }, 120_000);

  afterAll(async () => {
    await t?.close();
  });

  /** Statements the broker sent while `fn` ran. */
  async function statementsOf(fn: () => Promise<unknown>): Promise<number> {
    const before = t.broker.store.statementsSent;
    await fn();
    return t.broker.store.statementsSent - before;
  }

  it('CreateTask, GetTask, IssueToken, VerifyToken, CompleteTask and CancelTask each take one statement', async () => {
    const presenter = (await worker.whoAmI()).certThumbprint;
    let taskId = '';
    let token = '';
    const counts: Record<string, number> = {};
    counts.CreateTask = await statementsOf(async () => {
      taskId = (await worker.createTask({ spec })).task!.taskId;
    });
    counts.GetTask = await statementsOf(() => worker.getTask(taskId));
    counts.IssueToken = await statementsOf(async () => {
      token = (await worker.issueToken({ taskId })).token;
    });
    counts.VerifyToken = await statementsOf(async () => {
      expect((await api.verifyToken({ token, presenterCertThumbprint: presenter })).valid).toBe(true);
    });
    counts.CompleteTask = await statementsOf(() => worker.completeTask(taskId, 'done'));
    const other = (await worker.createTask({ spec })).task!.taskId;
    counts.CancelTask = await statementsOf(() => worker.cancelTask(other, 'not needed'));
    counts['VerifyToken (revoked)'] = await statementsOf(async () => {
      expect((await api.verifyToken({ token, presenterCertThumbprint: presenter })).reason).toBe('VERIFY_TOKEN_REASON_REVOKED');
    });
    const parent = (await worker.createTask({ spec })).task!.taskId;
    let child = '';
    counts.DelegateTask = await statementsOf(async () => {
      child = (await worker.delegateTask({ parentTaskId: parent, delegatee: API, spec: {} })).task!.taskId;
    });
    const tool = await t.client(API);
    counts['IssueToken (delegated task)'] = await statementsOf(() => tool.issueToken({ taskId: child }));
    counts['CompleteTask (with a delegated task)'] = await statementsOf(() => worker.completeTask(parent, 'done'));
    expect(counts).toEqual({
      CreateTask: 1,
      GetTask: 1,
      IssueToken: 1,
      VerifyToken: 1,
      CompleteTask: 1,
      CancelTask: 1,
      'VerifyToken (revoked)': 1,
      DelegateTask: 1,
      'IssueToken (delegated task)': 1,
      'CompleteTask (with a delegated task)': 1,
    });
  });

  it('a task the replica has not seen costs one read of its facts, once', async () => {
    const taskId = (await worker.createTask({ spec })).task!.taskId;
    await t.restart();
    worker = await t.client(WORKER);
    api = await t.client(API);
    await worker.whoAmI();
    expect(await statementsOf(() => worker.getTask(taskId))).toBe(2);
    expect(await statementsOf(() => worker.getTask(taskId))).toBe(1);
    expect(await statementsOf(() => worker.issueToken({ taskId }))).toBe(1);
  });
});
