/**
 * The pause of a blocked tasks/result between two broker checks: until the work ends in this
 * process, `ms` pass, or the request is aborted (then it rejects, and nothing more is asked).
 */
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';

export function waitForChange(settled: Promise<void> | undefined, ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(new McpError(ErrorCode.RequestTimeout, 'tasks/result was cancelled'));
  return new Promise<void>((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new McpError(ErrorCode.RequestTimeout, 'tasks/result was cancelled'));
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', onAbort, { once: true });
    void settled?.then(done);
  });
}
