/**
 * What a requester hears when the broker says no or cannot be asked, as MCP errors.
 *
 * A task that does not exist and a task that is someone else's are the same answer, the one the
 * SDK gives for an unknown task, so a task ID is no oracle. A broker that cannot be reached is
 * an error that says so and asks for a retry: the guard fails closed, it never answers from what
 * this process remembers.
 */
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import { TaskBrokerError } from '../client/errors.js';

function taskNotFound(taskId: string): McpError {
  return new McpError(ErrorCode.InvalidParams, `Task not found: ${taskId}`);
}

export function noRequester(): McpError {
  return new McpError(ErrorCode.InvalidRequest, 'task requests need an authenticated requester: an mTLS client certificate (X509-SVID) or a bearer token');
}

/** Whether the broker refused the call for now (its caller quota or queue) and said when to try again. */
export function isBrokerBusy(err: unknown): err is TaskBrokerError & { retryAfterMs: number } {
  return err instanceof TaskBrokerError && err.retryAfterMs !== undefined;
}

/** Whether the broker could not be reached or did not answer in time (nothing was decided). */
export function isBrokerUnavailable(err: unknown): boolean {
  if (err instanceof TaskBrokerError) {
    return err.reason === 'unavailable' || err.reason === 'deadline-exceeded' || err.reason === 'cancelled';
  }
  return false;
}

/** The MCP error for a failed broker call about `taskId` (when the call named one). */
export function mcpErrorOf(err: unknown, taskId?: string): McpError {
  if (err instanceof McpError) return err;
  if (!(err instanceof TaskBrokerError)) {
    return new McpError(ErrorCode.InternalError, `task broker call failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (isBrokerUnavailable(err)) {
    return new McpError(ErrorCode.InternalError, `task broker unavailable: ${err.details} (retry)`);
  }
  switch (err.reason) {
    case 'not-found':
      return taskId === undefined ? new McpError(ErrorCode.InvalidParams, 'Task not found') : taskNotFound(taskId);
    case 'permission-denied':
      return new McpError(ErrorCode.InvalidRequest, `task broker denied the request: ${err.details}`);
    case 'unauthenticated':
      return new McpError(ErrorCode.InvalidRequest, `task broker did not accept the requester: ${err.details}`);
    case 'invalid-argument':
    case 'failed-precondition':
      return new McpError(ErrorCode.InvalidParams, err.details);
    case 'resource-exhausted':
      return new McpError(
        ErrorCode.InternalError,
        `task broker busy: ${err.details} (retry${err.retryAfterMs === undefined ? '' : ` after ${err.retryAfterMs} ms`})`,
      );
    default:
      return new McpError(ErrorCode.InternalError, `task broker error: ${err.message}`);
  }
}
