/**
 * Offline verifications reported by resource servers (ReportTokenUse) become `token.used` events
 * on each task's chain: one write-batcher operation per task (tb_op_used, migrations/0004), so a
 * report touching many tasks takes the tasks' locks in the batcher's order like any other call.
 * Only a task's audience may report on it; a report about a task that does not exist or belongs
 * to another audience is rejected, both alike. A report_id the same reporter sent before is a
 * duplicate and is not recorded again: a reporter retries a failed call with the same reports.
 * Input is checked in full before anything is written; a call's operations go to the write queue
 * a few at a time. A call that fails part-way may have recorded some tasks' uses: the reporter's
 * retry (same report ids) records the rest, and nothing twice.
 */
import { ACTION_NAME, type Actor } from '../model/task.js';
import { invalid, taskIdArgument } from './validation.js';
import type { TaskAccess } from './task-access.js';

export interface TokenUseInput {
  reportId: string;
  tokenId: string;
  taskId: string;
  /** The VerifyTokenReason name, e.g. VERIFY_TOKEN_REASON_VALID. */
  outcome: string;
  operation: string;
  verifiedAt: Date;
  presenterThumbprint?: string;
}

export interface TokenUseCounts {
  recorded: number;
  duplicates: number;
  rejected: number;
}

/** Operations (one per task) of one call in the write queue at once. */
const TASKS_IN_FLIGHT = 8;

/** At most this many uses per ReportTokenUse call. */
export const MAX_TOKEN_USES_PER_CALL = 1024;

const REPORT_ID = /^[\x21-\x7e]{1,128}$/;
const TOKEN_ID = /^[A-Za-z0-9_-]{1,64}$/;
const THUMBPRINT = /^[A-Za-z0-9_-]{43}$/;
const OUTCOME = /^VERIFY_TOKEN_REASON_[A-Z_]{1,64}$/;
/** A verification time further from the broker's clock than this is refused: a reporter's clock that far off is broken. */
const MAX_CLOCK_DISTANCE_MS = 7 * 24 * 3600 * 1000;

/** Checks every use; the first problem is an INVALID_ARGUMENT naming the use and the field. */
export function validateTokenUses(uses: TokenUseInput[], now: Date): void {
  if (uses.length === 0) throw invalid('uses: at least one token use is required');
  if (uses.length > MAX_TOKEN_USES_PER_CALL) throw invalid(`uses: at most ${MAX_TOKEN_USES_PER_CALL} per call (got ${uses.length})`);
  const seen = new Set<string>();
  uses.forEach((u, i) => {
    const at = `uses[${i}]`;
    if (!REPORT_ID.test(u.reportId)) throw invalid(`${at}.report_id: 1 to 128 printable characters without spaces`);
    if (seen.has(u.reportId)) throw invalid(`${at}.report_id: repeated within the call`);
    seen.add(u.reportId);
    if (!TOKEN_ID.test(u.tokenId)) throw invalid(`${at}.token_id: not a token ID`);
    try {
      taskIdArgument(u.taskId);
    } catch {
      throw invalid(`${at}.task_id: not a task ID`);
    }
    if (!OUTCOME.test(u.outcome) || u.outcome === 'VERIFY_TOKEN_REASON_UNSPECIFIED') throw invalid(`${at}.outcome: a VerifyTokenReason other than UNSPECIFIED`);
    if (!ACTION_NAME.test(u.operation)) throw invalid(`${at}.operation: 1 to 128 letters, digits and . _ : / -, starting with a letter or digit`);
    if (!Number.isFinite(u.verifiedAt.getTime()) || Math.abs(u.verifiedAt.getTime() - now.getTime()) > MAX_CLOCK_DISTANCE_MS)
      throw invalid(`${at}.verified_at: required, and within 7 days of the broker's clock`);
    if (u.presenterThumbprint !== undefined && u.presenterThumbprint !== '' && !THUMBPRINT.test(u.presenterThumbprint))
      throw invalid(`${at}.presenter_cert_thumbprint: an RFC 8705 x5t#S256 (43 base64url characters)`);
  });
}

export async function recordTokenUses(access: TaskAccess, actor: Actor, uses: TokenUseInput[]): Promise<TokenUseCounts> {
  const now = access.now();
  validateTokenUses(uses, now);
  const byTask = new Map<string, TokenUseInput[]>();
  for (const u of uses) {
    let group = byTask.get(u.taskId);
    if (!group) byTask.set(u.taskId, (group = []));
    group.push(u);
  }
  // At most TASKS_IN_FLIGHT operations of one call wait in the write queue at a time: a call naming
  // a thousand tasks must not fill the queue that every caller's writes share.
  const groups = [...byTask];
  const results: TokenUseCounts[] = [];
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < groups.length && !failed) {
      const [taskId, group] = groups[next++]!;
      const op = {
        op: 'used',
        task_id: taskId,
        ...access.who(actor, now),
        uses: group.map((u) => ({
          report_id: u.reportId,
          token_id: u.tokenId,
          outcome: u.outcome,
          operation: u.operation,
          verified_at: u.verifiedAt.toISOString(),
          presenter: u.presenterThumbprint || null,
        })),
      };
      try {
        results.push((await access.apply(taskId, op)) as unknown as TokenUseCounts);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(TASKS_IN_FLIGHT, groups.length) }, worker));
  const counts: TokenUseCounts = { recorded: 0, duplicates: 0, rejected: 0 };
  for (const r of results) {
    counts.recorded += r.recorded;
    counts.duplicates += r.duplicates;
    counts.rejected += r.rejected;
  }
  return counts;
}
