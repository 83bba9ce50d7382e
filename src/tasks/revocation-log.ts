/**
 * Reading the revocation log (migrations/0004): one row per task that ended with tokens still
 * valid, in commit order (`seq`). A resource server's view is the rows whose audience is its
 * own SPIFFE ID; its cursor is the seq of the last such row it has considered, tagged with the
 * database's instance id so a cursor from another database is never taken for one of ours.
 */
import type { FinalState } from '../model/task.js';
import { BACKGROUND_SQL, type Store } from '../store/database.js';

export interface RevocationEntry {
  seq: number;
  taskId: string;
  audience: string;
  taskState: FinalState;
  reason: string;
  revokedAt: Date;
  revokedTokens: number;
  tokensExpireBy: Date;
}

/** One page of an audience's log after a cursor. */
export interface RevocationPage {
  entries: RevocationEntry[];
  /** The seq to resume after: the last entry's, or the audience's newest (expired entries are skipped, not lost). */
  lastSeq: number;
  /** More entries follow this page. */
  more: boolean;
}

interface Row {
  seq: string | number;
  task_id: string;
  audience: string;
  task_state: FinalState;
  reason: string;
  revoked_at: Date | string;
  revoked_tokens: number;
  tokens_expire_by: Date | string;
  audience_head?: string | number | null;
}

/** The longest clock tolerance a verifier may use (the verifier SDK's maximum): revocations are sent that long past their tokens' expiry. */
export const REVOCATION_LEEWAY_MS = 60_000;

const COLUMNS = 'seq, task_id, audience, task_state, reason, revoked_at, revoked_tokens, tokens_expire_by';
const AUDIENCE_SQL = `select ${COLUMNS}, (select max(seq) from revocations where audience = $1) as audience_head
  from (select 1) one left join lateral (select ${COLUMNS} from revocations where audience = $1 and seq > $2 and tokens_expire_by > $3 order by seq limit $4) r on true`;
// The feed's reads run on its own schedule (after a notification, or polling): not a call's round trip.
const SINCE_SQL = `${BACKGROUND_SQL}select ${COLUMNS} from revocations where seq > $1 order by seq limit $2`;
const HEAD_SQL = `${BACKGROUND_SQL}select last_seq from revocation_log_head`;
const INSTANCE_SQL = 'select instance_id from broker_instance';

function toEntry(row: Row): RevocationEntry {
  return {
    seq: Number(row.seq),
    taskId: row.task_id,
    audience: row.audience,
    taskState: row.task_state,
    reason: row.reason,
    revokedAt: new Date(row.revoked_at),
    revokedTokens: row.revoked_tokens,
    tokensExpireBy: new Date(row.tokens_expire_by),
  };
}

export class RevocationLog {
  readonly #store: Pick<Store, 'read'>;
  #instance: Promise<string> | undefined;

  constructor(store: Pick<Store, 'read'>) {
    this.#store = store;
  }

  /** This database's id, as cursors carry it. */
  instanceId(): Promise<string> {
    this.#instance ??= this.#store.read<{ instance_id: string }>('tb_instance', INSTANCE_SQL, []).then(
      (rows) => rows[0]?.instance_id ?? '',
      (err: unknown) => {
        this.#instance = undefined;
        throw err;
      },
    );
    return this.#instance;
  }

  /**
   * `audience`'s entries after `afterSeq` whose tokens had not all expired REVOCATION_LEEWAY_MS
   * before `now` (a verifier may accept a token that long past its exp); at most `limit`.
   */
  async forAudience(audience: string, afterSeq: number, now: Date, limit: number): Promise<RevocationPage> {
    const expiredBefore = new Date(now.getTime() - REVOCATION_LEEWAY_MS);
    const rows = await this.#store.read<Row>('tb_revocations_for', AUDIENCE_SQL, [audience, afterSeq, expiredBefore, limit]);
    const head = rows[0]?.audience_head;
    const entries = rows.filter((r) => r.seq !== null && r.seq !== undefined).map(toEntry);
    const more = entries.length >= limit;
    const last = entries.at(-1)?.seq ?? afterSeq;
    return { entries, lastSeq: more ? last : Math.max(last, head === null || head === undefined ? 0 : Number(head), afterSeq), more };
  }

  /** Every entry after `afterSeq`, whatever its audience (the feed's read); at most `limit`. */
  async since(afterSeq: number, limit: number): Promise<RevocationEntry[]> {
    return (await this.#store.read<Row>('tb_revocations_since', SINCE_SQL, [afterSeq, limit])).map(toEntry);
  }

  /** The newest committed seq. */
  async head(): Promise<number> {
    const [row] = await this.#store.read<{ last_seq: string | number }>('tb_revocation_head', HEAD_SQL, []);
    return Number(row?.last_seq ?? 0);
  }
}

/** `<instance>.<seq>`: opaque to clients. */
export function encodeRevocationCursor(instanceId: string, seq: number): string {
  return `${instanceId}.${seq}`;
}

/** The seq of a cursor this database issued; undefined for anything else (a snapshot follows). */
export function decodeRevocationCursor(cursor: string, instanceId: string): number | undefined {
  if (cursor.length > 64) return undefined;
  const dot = cursor.lastIndexOf('.');
  if (dot < 0 || cursor.slice(0, dot) !== instanceId) return undefined;
  const digits = cursor.slice(dot + 1);
  if (!/^(0|[1-9][0-9]{0,15})$/.test(digits)) return undefined;
  return Number(digits);
}
