/**
 * Admission control on its own: per-caller in-flight limits, the order in which waiting calls
 * get their turn, a caller alone in the broker, releases of calls that never ran, the rate limit.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { CallAdmission, type AdmissionSlot, type Refusal } from '../../src/api/admission.js';

const services = ['taskbroker.v1.TaskBroker'];

function slot(result: AdmissionSlot | Refusal): AdmissionSlot {
  if (!('release' in result)) throw new Error(`refused: ${result.details}`);
  return result;
}

/** Admits a call for `caller` and records when it runs. */
function start(admission: CallAdmission, caller: string, ran: string[], label = caller): AdmissionSlot {
  const s = slot(admission.admit(caller));
  s.whenActive(() => ran.push(label));
  return s;
}

describe('admission', () => {
  it('refuses a caller over its in-flight limit with RESOURCE_EXHAUSTED and a retry hint, and takes it again once a call ends', () => {
    const admission = new CallAdmission({ services, limits: { maxInFlightPerCaller: 2 } });
    const a = slot(admission.admit('spiffe://t/a'));
    slot(admission.admit('spiffe://t/a'));
    const refused = admission.admit('spiffe://t/a');
    expect(refused).toMatchObject({
      code: grpc.status.RESOURCE_EXHAUSTED,
      reason: 'caller-in-flight',
      retryAfterMs: 250,
      details: expect.stringMatching(/at most 2 at once/),
    });
    // Another caller is not affected.
    expect('release' in admission.admit('spiffe://t/b')).toBe(true);
    a.release();
    a.release(); // a second release changes nothing
    expect('release' in admission.admit('spiffe://t/a')).toBe(true);
    expect(admission.admit('spiffe://t/a')).toMatchObject({ reason: 'caller-in-flight' });
  });

  it('runs calls in turns: a caller with many waiting calls and one with a single call alternate', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 1, maxInFlightPerCaller: 100 } });
    const ran: string[] = [];
    const running = start(admission, 'spiffe://t/flood', ran, 'flood-0');
    const flood = Array.from({ length: 5 }, (_, i) => start(admission, 'spiffe://t/flood', ran, `flood-${i + 1}`));
    const single = start(admission, 'spiffe://t/single', ran, 'single');
    expect(ran).toEqual(['flood-0']);
    running.release();
    expect(ran).toEqual(['flood-0', 'flood-1']);
    flood[0]!.release();
    // The single caller's turn comes next, not after the four other waiting flood calls.
    expect(ran).toEqual(['flood-0', 'flood-1', 'single']);
    single.release();
    expect(ran.at(-1)).toBe('flood-2');
    expect(admission.active).toBe(1);
  });

  it('a burst (more than twice the active slots in flight) runs at most an equal share, and a free slot stays free for others', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 2 } });
    const ran: string[] = [];
    const other = start(admission, 'spiffe://t/other', ran, 'other-0');
    const flood = Array.from({ length: 10 }, (_, i) => start(admission, 'spiffe://t/flood', ran, `flood-${i}`));
    expect(ran).toEqual(['other-0', 'flood-0']);
    other.release();
    // Two callers share two slots: the burst already runs its one; the free slot waits for others.
    expect(ran).toEqual(['other-0', 'flood-0']);
    start(admission, 'spiffe://t/other', ran, 'other-1');
    expect(ran).toEqual(['other-0', 'flood-0', 'other-1']);
    flood[0]!.release();
    expect(ran.at(-1)).toBe('flood-1');
    expect(admission.active).toBe(2);
  });

  it('a caller whose calls merely got slower is not held to a share: it takes any free slot in its turn', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 6 } });
    const ran: string[] = [];
    start(admission, 'spiffe://t/a', ran, 'a-0');
    start(admission, 'spiffe://t/b', ran, 'b-0');
    for (let i = 1; i <= 4; i++) start(admission, 'spiffe://t/a', ran, `a-${i}`);
    expect(ran).toEqual(['a-0', 'b-0', 'a-1', 'a-2', 'a-3', 'a-4']);
  });

  it('a caller alone in the broker may use every active slot', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 4 } });
    const ran: string[] = [];
    for (let i = 0; i < 6; i++) start(admission, 'spiffe://t/only', ran, `only-${i}`);
    expect(ran).toEqual(['only-0', 'only-1', 'only-2', 'only-3']);
  });

  it('a waiting call released before its turn (the client gave up) leaves the line, and never runs', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 1 } });
    const ran: string[] = [];
    const first = start(admission, 'spiffe://t/a', ran, 'a-0');
    const gaveUp = start(admission, 'spiffe://t/b', ran, 'b-0');
    start(admission, 'spiffe://t/c', ran, 'c-0');
    gaveUp.release();
    first.release();
    expect(ran).toEqual(['a-0', 'c-0']);
    expect(admission.inFlight).toBe(1);
  });

  it('sheds load with UNAVAILABLE when the database queue is full, before any work', () => {
    let queue = 0;
    const admission = new CallAdmission({ services, limits: { maxDatabaseQueue: 3 }, databaseQueue: () => queue });
    expect('release' in admission.admit('spiffe://t/a')).toBe(true);
    queue = 3;
    expect(admission.admit('spiffe://t/b')).toMatchObject({ code: grpc.status.UNAVAILABLE, reason: 'database-queue' });
  });

  it('limits a caller to its rate with a token bucket, saying when the next call may come', () => {
    const admission = new CallAdmission({ services, limits: { callerRatePerSecond: 10, callerBurst: 2 } });
    slot(admission.admit('spiffe://t/a')).release();
    slot(admission.admit('spiffe://t/a')).release();
    const refused = admission.admit('spiffe://t/a');
    expect(refused).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, reason: 'caller-rate' });
    expect((refused as Refusal).retryAfterMs).toBeGreaterThan(0);
    expect((refused as Refusal).retryAfterMs).toBeLessThanOrEqual(100);
    expect('release' in admission.admit('spiffe://t/b')).toBe(true);
  });
});
