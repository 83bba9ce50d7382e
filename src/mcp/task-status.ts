/**
 * A broker task as an MCP Task (spec 2025-11-25). The broker's state is the only truth: nothing
 * local refines it (guarded works never wait on the requester, so there is no input_required).
 */
import type { Task as McpTask } from '@modelcontextprotocol/sdk/types.js';
import type { Task } from '../client/results.js';

type McpTaskStatus = McpTask['status'];

export interface TaskViewOptions {
  pollIntervalMs: number;
}

export function mcpTaskOf(task: Task, options: TaskViewOptions): McpTask {
  const { status, statusMessage } = statusOf(task);
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

function statusOf(task: Task): { status: McpTaskStatus; statusMessage?: string } {
  switch (task.state) {
    case 'PENDING_APPROVAL':
      return { status: 'working', statusMessage: 'waiting for approval' };
    case 'ACTIVE':
      return { status: 'working' };
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
