/**
 * The write batcher's scheduling, with a scripted statement in place of the database (the race
 * test in test/tasks/batcher-race.test.ts runs it against PostgreSQL and PGlite): calls that
 * arrive together share a statement, results reach their own callers, a failing operation is
 * isolated by bisection, conflicts are retried, a lost connection fails its batch as "outcome
 * unknown" without a retry, and a full queue is refused with a retry hint.
 */
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { CommitOutcomeUnknownError } from '../../src/store/failures.js';
import { WriteBatcher, type ApplyBatch } from '../../src/store/write-batcher.js';

interface Op {
  id: number;
  bad?: boolean;
}

/** A statement that answers each operation with its id, and fails (as PostgreSQL would) when `fail` says so. */
function scripted(fail: (ops: Op[], call: number) => Error | undefined = () => undefined) {
  const calls: Op[][] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const apply: ApplyBatch = async (json) => {
    const ops = JSON.parse(json) as Op[];
    calls.push(ops);
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await new Promise((resolve) => setImmediate(resolve));
    inFlight -= 1;
    const err = fail(ops, calls.length);
    if (err) throw err;
    return ops.map((op) => ({ done: op.id }));
  };
  return { apply, calls, maxInFlight: () => maxInFlight };
}

const sqlError = (code: string) => Object.assign(new Error(`error ${code}`), { code });

describe('WriteBatcher', () => {
  it('sends calls that arrive together in one statement, sorted by lock key, each answered with its own result', async () => {
    const s = scripted();
    const b = new WriteBatcher({ apply: s.apply });
    const keys = ['tsk_c', 'tsk_a', 'tsk_b', 'tsk_a'];
    const results = await Promise.all(keys.map((key, id) => b.submit(key, { id })));
    expect(results).toEqual([{ done: 0 }, { done: 1 }, { done: 2 }, { done: 3 }]);
    expect(s.calls).toEqual([[{ id: 1 }, { id: 3 }, { id: 2 }, { id: 0 }]]);
  });

  it('keeps at most maxBatch operations per statement and maxInFlight statements at once', async () => {
    const s = scripted();
    const b = new WriteBatcher({ apply: s.apply, limits: { maxBatch: 10, maxInFlight: 2 } });
    const results = await Promise.all(Array.from({ length: 95 }, (_, id) => b.submit(`k${id}`, { id }, `caller-${id % 10}`)));
    expect(results).toHaveLength(95);
    expect(Math.max(...s.calls.map((c) => c.length))).toBe(10);
    expect(s.calls.flat()).toHaveLength(95);
    expect(s.maxInFlight()).toBe(2);
  });

  it('isolates a failing operation by bisection: only it fails, the others commit, in a few statements', async () => {
    const s = scripted((ops) => (ops.some((op) => op.bad) ? sqlError('23505') : undefined));
    const b = new WriteBatcher({ apply: s.apply });
    const outcomes = await Promise.all(
      Array.from({ length: 64 }, (_, id) =>
        b.submit(`k${String(id).padStart(2, '0')}`, { id, bad: id === 37 }, `caller-${id % 8}`).then(
          (r) => r,
          (err: Error) => err.message,
        ),
      ),
    );
    expect(outcomes.filter((o) => typeof o === 'string')).toEqual(['error 23505']);
    expect(outcomes[37]).toBe('error 23505');
    // 1 failed batch of 64, then each level of the bisection: far fewer than 64 single statements.
    expect(s.calls.length).toBeLessThanOrEqual(1 + 2 * 6);
    // Nothing is answered twice, and every operation but the culprit committed exactly once.
    const committed = s.calls.filter((c) => !c.some((op) => op.bad)).flat();
    expect(committed.map((op) => op.id).sort((x, y) => x - y)).toEqual(Array.from({ length: 64 }, (_, id) => id).filter((id) => id !== 37));
  });

  it("takes at most maxPerCaller operations of one caller per statement, so others' calls go in the next one", async () => {
    const s = scripted();
    const b = new WriteBatcher({ apply: s.apply, limits: { maxPerCaller: 4, maxInFlight: 1 } });
    const flood = Array.from({ length: 12 }, (_, id) => b.submit(`f${String(id).padStart(2, '0')}`, { id }, 'flood'));
    const other = b.submit('o', { id: 100 }, 'other');
    await Promise.all([...flood, other]);
    expect(s.calls.map((c) => c.map((op) => op.id))).toEqual([
      [0, 1, 2, 3, 100],
      [4, 5, 6, 7],
      [8, 9, 10, 11],
    ]);
  });

  it('retries a conflict (deadlock) a bounded number of times', async () => {
    const s = scripted((_ops, call) => (call <= 2 ? sqlError('40P01') : undefined));
    const b = new WriteBatcher({ apply: s.apply, limits: { conflictRetries: 2 } });
    expect(await b.submit('k', { id: 1 })).toEqual({ done: 1 });
    const always = scripted(() => sqlError('40P01'));
    const c = new WriteBatcher({ apply: always.apply, limits: { conflictRetries: 2 } });
    await expect(c.submit('k', { id: 1 })).rejects.toMatchObject({ code: '40P01' });
    expect(always.calls).toHaveLength(3);
  });

  it('fails every call of a batch whose connection died after it was sent, as outcome unknown, without a retry', async () => {
    const s = scripted(() => new CommitOutcomeUnknownError({ kind: 'connection', reason: 'the connection to the database was lost' }));
    const failed: unknown[] = [];
    const b = new WriteBatcher({ apply: s.apply, observer: { committed: () => undefined, failed: (f) => failed.push(f) } });
    const outcomes = await Promise.allSettled([b.submit('a', { id: 1 }), b.submit('b', { id: 2 })]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    expect(outcomes.map((o) => (o as PromiseRejectedResult).reason as unknown)).toEqual([
      expect.any(CommitOutcomeUnknownError),
      expect.any(CommitOutcomeUnknownError),
    ]);
    expect(s.calls).toHaveLength(1);
    expect(failed).toHaveLength(1);
  });

  it('refuses a call when the queue is full, with RESOURCE_EXHAUSTED and a retry hint', async () => {
    const s = scripted();
    const b = new WriteBatcher({ apply: s.apply, limits: { maxQueued: 3 } });
    const accepted = [1, 2, 3].map((id) => b.submit('k', { id }));
    const refused = await b.submit('k', { id: 4 }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(BrokerError);
    expect(refused).toMatchObject({ kind: 'resource-exhausted', retryAfterMs: expect.any(Number) });
    expect(await Promise.all(accepted)).toHaveLength(3);
  });

  it('stores NUL and lone surrogates as U+FFFD, and leaves escaped backslashes alone', async () => {
    const s = scripted();
    let sent = '';
    const b = new WriteBatcher({
      apply: (json) => {
        sent = json;
        return s.apply(json);
      },
    });
    await b.submit('k', { id: 1, text: 'a\u0000b\ud800c\\u0000d😀' });
    expect(JSON.parse(sent)).toEqual([{ id: 1, text: 'a\ufffdb\ufffdc\\u0000d😀' }]);
  });
});
