/**
 * The works this process runs for broker tasks, and the TaskStore the SDK is given over them.
 *
 * The SDK's TaskStore methods see a session ID, never the requester, so they cannot be checked
 * against the broker: the store given to the SDK answers nothing (no task, no list, no result)
 * and changes nothing. Every requester-facing tasks/* request is answered by the guard's
 * handlers, which ask the broker.
 *
 * Bounded: a work leaves the map when it settles; the number running at once has a cap.
 */
import type { CreateTaskOptions, TaskStore } from '@modelcontextprotocol/sdk/experimental/tasks/interfaces.js';
import type { Request, RequestId, Result, Task as McpTask } from '@modelcontextprotocol/sdk/types.js';
import type { Task } from '../client/results.js';

/** Why a work was aborted: the requester cancelled, the task's ttl elapsed, or the server shuts down. */
export type AbortReason = 'cancelled' | 'expired' | 'shutdown';

export interface RunningWork {
  readonly task: Task;
  readonly controller: AbortController;
  /** Settles when the work has ended and the broker was told (or the attempt gave up). */
  readonly settled: Promise<void>;
}

export class LocalTasks implements TaskStore {
  readonly #works = new Map<string, RunningWork>();

  get size(): number {
    return this.#works.size;
  }

  add(work: RunningWork): void {
    this.#works.set(work.task.taskId, work);
  }

  delete(taskId: string): void {
    this.#works.delete(taskId);
  }

  work(taskId: string): RunningWork | undefined {
    return this.#works.get(taskId);
  }

  abort(taskId: string, reason: AbortReason): void {
    this.#works.get(taskId)?.controller.abort(reason);
  }

  all(): RunningWork[] {
    return [...this.#works.values()];
  }

  // TaskStore, for the SDK's internal calls only (see the header).

  createTask(_params: CreateTaskOptions, _requestId: RequestId, request: Request): Promise<McpTask> {
    return Promise.reject(new Error(`tasks of this server are created at the task broker by the guard's tools; ${request.method} cannot create one here`));
  }

  /**
   * Always null. The SDK asks its store about a task named in a request's related-task metadata,
   * which any client can set to any task ID: answering from here would tell a stranger that a
   * task exists (and stream its status to them). A guarded work never sends requests to the
   * requester, so no SDK-internal call has a task of this process to ask about.
   */
  getTask(_taskId: string): Promise<McpTask | null> {
    return Promise.resolve(null);
  }

  /** Ignored, for the same reason: the SDK would set the status of whatever task a client names. Statuses are the broker's. */
  updateTaskStatus(_taskId: string, _status: McpTask['status']): Promise<void> {
    return Promise.resolve();
  }

  storeTaskResult(taskId: string): Promise<void> {
    return Promise.reject(new Error(`task ${taskId}: the guard stores results at the task broker when the work returns`));
  }

  getTaskResult(taskId: string): Promise<Result> {
    return Promise.reject(new Error(`task ${taskId}: results are read from the task broker (tasks/result)`));
  }

  listTasks(): Promise<{ tasks: McpTask[]; nextCursor?: string }> {
    return Promise.resolve({ tasks: [] });
  }
}
