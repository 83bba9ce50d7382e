/**
 * `admin revoke-workload --dry-run` trusts what the broker did, not what it asked: a broker older
 * than `dry_run` ignores the field and revokes for real, and the CLI must say so loudly (stderr,
 * exit 1) instead of printing "nothing was changed".
 */
import { describe, expect, it } from 'vitest';
import { revokeWorkload } from '../../src/cli/admin/commands.js';
import { report } from '../../src/cli/admin/run.js';
import type { RevokeWorkloadResponse__Output } from '../../src/gen/taskbroker/v1/RevokeWorkloadResponse.js';

const SELECTOR = 'spiffe://example.org/ns/batch/**';
const answer = (dryRun: boolean): RevokeWorkloadResponse__Output => ({
  revokedTasks: 2,
  revokedTokens: 3,
  taskIds: ['tsk_a', 'tsk_b'],
  dryRun,
  liveTokens: dryRun ? 3 : 0,
  descendantTasks: 0,
});

function run(res: RevokeWorkloadResponse__Output, dryRun: boolean, format: 'table' | 'json' = 'table') {
  const out: string[] = [];
  let err = '';
  const code = report(
    revokeWorkload,
    res,
    { selector: SELECTOR, reason: 'r', dryRun },
    format,
    (l) => out.push(l),
    (t) => (err += t),
    'task-broker admin revoke-workload',
  );
  return { code, out: out.join('\n'), err };
}

describe('revoke-workload --dry-run and the answer the broker gave', () => {
  it('a real dry-run answer: "would revoke", exit 0', () => {
    const r = run(answer(true), true);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^dry run: would revoke 2 tasks .* nothing was changed:/);
    expect(r.err).toBe('');
  });

  it.each(['table', 'json'] as const)('a broker that ignored dry_run (it revoked): the truth on stdout, a loud line on stderr, exit 1 (%s)', (format) => {
    const r = run(answer(false), true, format);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      'task-broker admin revoke-workload: the broker ignored --dry-run (it predates it) and REVOKED 2 tasks with 3 tokens: upgrade every broker replica before using --dry-run\n',
    );
    if (format === 'table') expect(r.out).toMatch(/^revoked 2 tasks and 3 tokens of workloads matching/);
    else expect(JSON.parse(r.out)).toMatchObject({ dryRun: false, revokedTasks: 2 });
    expect(r.out).not.toContain('nothing was changed');
  });

  it('a real revocation without --dry-run: exit 0', () => {
    const r = run(answer(false), false);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
  });
});
