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
    expect(refused).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, reason: 'caller-in-flight', retryAfterMs: 100, details: expect.stringMatching(/at most 2 at once/) });
    // Another caller is not affected.
    expect('release' in admission.admit('spiffe://t/b')).toBe(true);
    a.release();
    a.release(); // a second release changes nothing
    expect('release' in admission.admit('spiffe://t/a')).toBe(true);
    expect(admission.admit('spiffe://t/a')).toMatchObject({ reason: 'caller-in-flight' });
  });

  it('runs calls in turns: a caller with many waiting calls and one with a single call alternate', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 1, maxActivePerCaller: 1, maxInFlightPerCaller: 100 } });
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

  it('a caller runs at most maxActivePerCaller calls while another caller is busy', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 8, maxActivePerCaller: 2 } });
    const ran: string[] = [];
    start(admission, 'spiffe://t/other', ran);
    const flood = Array.from({ length: 5 }, (_, i) => start(admission, 'spiffe://t/flood', ran, `flood-${i}`));
    expect(ran).toEqual(['spiffe://t/other', 'flood-0', 'flood-1']);
    flood[0]!.release();
    expect(ran).toEqual(['spiffe://t/other', 'flood-0', 'flood-1', 'flood-2']);
    expect(admission.active).toBe(3);
    expect(admission.inFlight).toBe(5);
  });

  it('a caller alone in the broker may use every active slot', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 4, maxActivePerCaller: 1 } });
    const ran: string[] = [];
    for (let i = 0; i < 6; i++) start(admission, 'spiffe://t/only', ran, `only-${i}`);
    expect(ran).toEqual(['only-0', 'only-1', 'only-2', 'only-3']);
  });

  it('a waiting call released before its turn (the client gave up) leaves the line, and never runs', () => {
    const admission = new CallAdmission({ services, limits: { maxActive: 1, maxActivePerCaller: 1 } });
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
