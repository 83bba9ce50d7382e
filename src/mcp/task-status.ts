/**
 * A broker task as an MCP Task (spec 2025-11-25). The broker's state is the truth; the only
 * local refinement is `input_required`, which the SDK sets while a live task's work waits on the
 * requester (elicitation, sampling) and which the broker has no word for.
 */
import type { Task as McpTask } from '@modelcontextprotocol/sdk/types.js';
import type { Task } from '../client/results.js';

export type McpTaskStatus = McpTask['status'];

export interface TaskViewOptions {
  pollIntervalMs: number;
  /** A status the SDK set locally for a live task (input_required), if any. */
  localStatus?: McpTaskStatus | undefined;
}

export function mcpTaskOf(task: Task, options: TaskViewOptions): McpTask {
  const { status, statusMessage } = statusOf(task, options.localStatus);
  return {
    taskId: task.taskId,
    status,
    ttl: task.spec.ttlSeconds * 1000,
    createdAt: task.createdAt.toISOString(),
    lastUpdatedAt: (task.endedAt ?? task.approvedAt ?? task.createdAt).toISOString(),
    pollInterval: options.pollIntervalMs,
    ...(statusMessage === undefined ? {} : { statusMessage }),
  };
}

function statusOf(task: Task, localStatus: McpTaskStatus | undefined): { status: McpTaskStatus; statusMessage?: string } {
  switch (task.state) {
    case 'PENDING_APPROVAL':
      return { status: localStatus === 'input_required' ? 'input_required' : 'working', statusMessage: 'waiting for approval' };
    case 'ACTIVE':
      return { status: localStatus === 'input_required' ? 'input_required' : 'working' };
    case 'COMPLETED':
      return task.resultFailed ? { status: 'failed', statusMessage: task.endReason || 'the tool failed' } : { status: 'completed' };
    case 'CANCELLED':
      return { status: 'cancelled', statusMessage: task.endReason || 'cancelled' };
    case 'EXPIRED':
      return { status: 'failed', statusMessage: 'task ttl elapsed' };
    case 'REVOKED':
      return { status: 'failed', statusMessage: `revoked: ${task.endReason ?? 'by an admin'}` };
  }
}

export function isTerminalState(task: Task): boolean {
  return task.state !== 'ACTIVE' && task.state !== 'PENDING_APPROVAL';
}
