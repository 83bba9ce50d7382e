/**
 * The examples run as the README says (`npm run example`, here after the suite's build): a local
 * broker on PGlite, the Express resource server with the verifier SDK, the workload with the
 * workload SDK. The workload's call succeeds with its token while the task lives and is refused
 * as REVOKED once the task completed. The MCP example (`npm run example:mcp`): an MCP server guarded
 * by the broker, two SDK clients, and the audit trail that tells the task's story.
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runProcess } from '../helpers/process.js';

const RUN = fileURLToPath(new URL('../../examples/run.mjs', import.meta.url));
const RUN_MCP = fileURLToPath(new URL('../../examples/mcp-server/run.mjs', import.meta.url));

describe('examples', () => {
  it('npm run example: the workload and the resource server, end to end', { timeout: 180_000 }, async () => {
    const result = await runProcess([process.execPath, RUN], { limitMs: 170_000 });
    const output = result.stdout + result.stderr;
    expect(result.code, output).toBe(0);
    expect(output).toMatch(/before completion: HTTP 200 .*"task_id":"tsk_/);
    expect(output).toMatch(/after completion: HTTP 401 .*"reason":"REVOKED"/);
    expect(output).toContain('example: OK');
  });

  it("npm run example:mcp: an MCP server whose tasks the broker guards, and the task's whole story in the audit trail", { timeout: 180_000 }, async () => {
    const result = await runProcess([process.execPath, RUN_MCP], { limitMs: 170_000 });
    const output = result.stdout + result.stderr;
    expect(result.code, output).toBe(0);
    expect(output).toContain('ok: the creator got the report');
    expect(output).toMatch(/ok: another identity's tasks\/result → ".*Task not found: tsk_/);
    // The admin's audit-trail: who created it for whom, who polled and read the result, who was refused, how it ended, the chain intact.
    expect(output).toMatch(/^ {2}created +\S+ by spiffe:\/\/example\.org\/ns\/mcp\/sa\/mcp-server for spiffe:\/\/example\.org\/ns\/agents\/sa\/analyst$/m);
    expect(output).toMatch(
      /^ {2}polled +\d+ times? by spiffe:\/\/example\.org\/ns\/agents\/sa\/analyst via spiffe:\/\/example\.org\/ns\/mcp\/sa\/mcp-server$/m,
    );
    expect(output).toMatch(/^ {2}result read +\d+ times? by spiffe:\/\/example\.org\/ns\/agents\/sa\/analyst via /m);
    expect(output).toMatch(/^ {2}denied +3 times by spiffe:\/\/example\.org\/ns\/agents\/sa\/intruder via /m);
    expect(output).toMatch(/^ {2}ended +completed \S+ by spiffe:\/\/example\.org\/ns\/mcp\/sa\/mcp-server: completed \(1 token revoked\)$/m);
    expect(output).toMatch(/hash chain verified: \d+ events/);
    expect(output).toContain('mcp example: OK');
  });
});
