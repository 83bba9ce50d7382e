/**
 * The examples run as the README says (`npm run example`, here after the suite's build): a local
 * broker on PGlite, the Express resource server with the verifier SDK, the workload with the
 * workload SDK. The workload's call succeeds with its token while the task lives and is refused
 * as REVOKED once the task completed.
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runProcess } from '../helpers/process.js';

const RUN = fileURLToPath(new URL('../../examples/run.mjs', import.meta.url));

describe('examples', () => {
  it('npm run example: the workload and the resource server, end to end', { timeout: 180_000 }, async () => {
    const result = await runProcess([process.execPath, RUN], { limitMs: 170_000 });
    const output = result.stdout + result.stderr;
    expect(result.code, output).toBe(0);
    expect(output).toMatch(/before completion: HTTP 200 .*"task_id":"tsk_/);
    expect(output).toMatch(/after completion: HTTP 401 .*"reason":"REVOKED"/);
    expect(output).toContain('example: OK');
  });
});
