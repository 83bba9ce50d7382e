/**
 * What the fault tests share: one trust domain and policy for the workloads they run, a wait on a
 * condition, and load: loops that run a task's life (CreateTask -> IssueToken -> CompleteTask)
 * against serve replicas and record every call's outcome, so a test can say afterwards which
 * codes failed calls got and check that every acknowledged effect is in the database.
 */
import * as grpc from '@grpc/grpc-js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { CreateTaskRequest } from '../../src/gen/taskbroker/v1/CreateTaskRequest.js';

export const TD = 'example.org';
/** A workload of the fault tests: spiffe://example.org/ns/faults/sa/NAME (the policy allows all of them). */
export const faultWorkload = (name: string) => `spiffe://${TD}/ns/faults/sa/${name}`;
export const WORKER = faultWorkload('worker');
export const ADMIN = `spiffe://${TD}/ns/platform/sa/admin`;
export const AUDIENCE = `spiffe://${TD}/ns/billing/sa/invoice-api`;
/** Every fault workload may export invoices for the billing services; ADMIN is the one admin. */
export const POLICY = `
version: 1
admins: ["${ADMIN}"]
rules:
  - name: fault-workers
    callers:
      spiffe_ids: ["spiffe://${TD}/ns/faults/**"]
    actions: ["invoice.export"]
    audiences: ["spiffe://${TD}/ns/billing/**"]
    scopes: ["invoices:read"]
`;

/**
 * Resolves with how long it took once `fn` holds (checked every 25 ms; a throw counts as not
 * yet); rejects after `limitMs`, which only a hang should reach.
 */
export async function until(fn: () => boolean | Promise<boolean>, limitMs: number, what: string): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (
      await Promise.resolve()
        .then(fn)
        .catch(() => false)
    )
      return Date.now() - t0;
    if (Date.now() - t0 > limitMs) throw new Error(`${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface CallOutcome {
  method: 'CreateTask' | 'IssueToken' | 'CompleteTask';
  replica: number;
  /** ms since the load started */
  at: number;
  durationMs: number;
  code: grpc.status;
  details: string;
  /** What the call acknowledged: the task for CreateTask and CompleteTask, the token ID for IssueToken. */
  taskId?: string;
  tokenId?: string;
}

export interface TaskLoad {
  readonly outcomes: CallOutcome[];
  readonly startedAt: number;
  stop(): Promise<void>;
}

export function taskSpec(audience: string): CreateTaskRequest['spec'] {
  return { action: 'invoice.export', resources: ['invoices/2026-11'], audience, scopes: ['invoices:read'], ttl: { seconds: 600 } };
}

/**
 * Starts `loopsPerClient` loops on each client (client i is replica i). A failed step ends the
 * iteration; the next one starts with a new task. Each call has `deadlineMs`, so a hang shows as
 * DEADLINE_EXCEEDED rather than a stuck test.
 */
export function startTaskLoad(
  clients: BrokerClient[],
  audience: string,
  options: { loopsPerClient?: number; deadlineMs?: number; pauseMs?: number } = {},
): TaskLoad {
  const outcomes: CallOutcome[] = [];
  const startedAt = Date.now();
  let running = true;
  const deadlineMs = options.deadlineMs ?? 10_000;
  const record = async <T>(
    method: CallOutcome['method'],
    replica: number,
    run: () => Promise<T>,
    ack: (res: T) => Partial<CallOutcome>,
  ): Promise<T | undefined> => {
    const t0 = Date.now();
    try {
      const res = await run();
      outcomes.push({ method, replica, at: t0 - startedAt, durationMs: Date.now() - t0, code: grpc.status.OK, details: '', ...ack(res) });
      return res;
    } catch (err) {
      const e = err as grpc.ServiceError;
      outcomes.push({
        method,
        replica,
        at: t0 - startedAt,
        durationMs: Date.now() - t0,
        code: e.code ?? grpc.status.UNKNOWN,
        details: e.details ?? String(err),
      });
      return undefined;
    }
  };
  const loop = async (client: BrokerClient, replica: number) => {
    while (running) {
      const created = await record(
        'CreateTask',
        replica,
        () => client.createTask({ spec: taskSpec(audience) }, { deadlineMs }),
        (r) => ({ taskId: r.task?.taskId }),
      );
      const taskId = created?.task?.taskId;
      if (taskId) {
        const issued = await record(
          'IssueToken',
          replica,
          () => client.issueToken({ taskId }, { deadlineMs }),
          (r) => ({ taskId, tokenId: r.tokenId }),
        );
        if (issued)
          await record(
            'CompleteTask',
            replica,
            () => client.completeTask(taskId, 'done', { deadlineMs }),
            (r) => ({ taskId: r.task?.taskId }),
          );
      }
      // A failing broker answers at once; pause a little so the loop does not spin.
      if (!created || !taskId) await new Promise((r) => setTimeout(r, options.pauseMs ?? 20));
    }
  };
  const loops = clients.flatMap((client, replica) => Array.from({ length: options.loopsPerClient ?? 2 }, () => loop(client, replica)));
  return {
    outcomes,
    startedAt,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** Counts of outcomes by status name. */
export function codeCounts(outcomes: readonly CallOutcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) counts[grpc.status[o.code]] = (counts[grpc.status[o.code]] ?? 0) + 1;
  return counts;
}
