/**
 * Access reports: batches (by size and by interval), at-least-once retries with the same
 * report_ids, the bounded buffer, the flush at close, and which outcomes are reported.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { createTaskTokenVerifier, type TaskTokenVerifier, type VerifierOptions } from '../../src/verifier/index.js';
import { FakeBroker, ManualClock, signingKey, token } from './fakes.js';

const presenter = randomBytes(300);
const thumbprint = createHash('sha256').update(presenter).digest('base64url');
const opts = { presenterCertificate: presenter, operation: 'invoices:read' };

const open: TaskTokenVerifier[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((v) => v.close()));
});

async function setUp(reporting: VerifierOptions['reporting'] = {}, extra: Partial<VerifierOptions> = {}) {
  const clock = new ManualClock();
  const broker = new FakeBroker();
  const logs: string[] = [];
  const verifier = createTaskTokenVerifier({ broker, clock, revocations: 'none', reporting, logger: (_level, msg) => logs.push(msg), ...extra });
  open.push(verifier);
  await verifier.ready();
  const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
  return { clock, broker, verifier, jwt, logs };
}

describe('access reports', () => {
  it('reports each authentic outcome with its fields, flushed by the interval', async () => {
    const { clock, broker, verifier, jwt } = await setUp({ flushIntervalMs: 1000 });
    await verifier.verify(jwt, opts);
    await verifier.verify(jwt, { presenterCertificate: randomBytes(10) });
    await verifier.verify('junk.token.here', opts); // not authentic: not reported
    await verifier.verify(await token(signingKey(), clock.now(), thumbprint), opts); // unknown key: not reported
    expect(broker.reportCalls).toHaveLength(0);
    const report = broker.nextReport();
    clock.advance(1000);
    const { uses } = await report;
    expect(uses).toHaveLength(2);
    expect(uses[0]).toMatchObject({
      outcome: 'VERIFY_TOKEN_REASON_VALID',
      operation: 'invoices:read',
      taskId: 'task-1',
      presenterCertThumbprint: thumbprint,
      verifiedAt: { seconds: String(Math.floor(clock.now() / 1000) - 1) },
    });
    expect(uses[0]!.reportId).toMatch(/^[0-9a-f-]{36}$/);
    expect(uses[1]).toMatchObject({ outcome: 'VERIFY_TOKEN_REASON_BINDING_MISMATCH', operation: 'verify' });
    expect(uses[0]!.reportId).not.toBe(uses[1]!.reportId);
  });

  it('flushes as soon as maxBatch are queued, in batches of at most maxBatch', async () => {
    const { clock, broker, verifier, jwt } = await setUp({ maxBatch: 4, flushIntervalMs: 60_000 });
    for (let i = 0; i < 10; i++) verifier.verifySync(jwt, opts);
    clock.advance(0);
    await verifier.flush();
    expect(broker.reportCalls.map((batch) => batch.length)).toEqual([4, 4, 2]);
    expect(verifier.stats().reports).toMatchObject({ sent: 10, buffered: 0 });
  });

  it('retries a failed batch with the same report_ids after a backoff', async () => {
    const { clock, broker, verifier, jwt, logs } = await setUp({ retryInitialMs: 1000, retryMaxMs: 8000 });
    for (let i = 0; i < 3; i++) verifier.verifySync(jwt, opts);
    broker.failReports = 2;
    await verifier.flush();
    expect(verifier.stats().reports).toMatchObject({ sent: 0, buffered: 3, failedFlushes: 1 });
    expect(logs).toContain('verifier: access report flush failed; will retry');
    const ids = broker.reportCalls[0]!.map((use) => use.reportId);
    // More verifications meanwhile do not cut the backoff short.
    verifier.verifySync(jwt, opts);
    const first = clock.nextDelay()!;
    expect(first).toBeGreaterThanOrEqual(500);
    clock.advance(first);
    await verifier.flush();
    expect(broker.reportCalls).toHaveLength(2);
    const second = clock.nextDelay()!;
    expect(second).toBeGreaterThanOrEqual(1000);
    clock.advance(second);
    await verifier.flush();
    expect(broker.reportCalls).toHaveLength(3);
    for (const call of broker.reportCalls) expect(call.slice(0, 3).map((use) => use.reportId)).toEqual(ids);
    expect(broker.reportCalls[2]).toHaveLength(4);
    expect(verifier.stats().reports).toMatchObject({ sent: 4, buffered: 0, failedFlushes: 2 });
  });

  it('drops a batch the broker refuses as malformed (INVALID_ARGUMENT) instead of retrying it forever; the reports behind it go on', async () => {
    const { broker, verifier, jwt, logs } = await setUp({ maxBatch: 2, flushIntervalMs: 60_000 });
    for (let i = 0; i < 4; i++) verifier.verifySync(jwt, opts);
    broker.failReports = 1;
    broker.failReportsCode = 3;
    await verifier.flush();
    expect(broker.reportCalls).toHaveLength(2);
    expect(verifier.stats().reports).toMatchObject({ sent: 2, dropped: 2, buffered: 0 });
    expect(logs).toContain('verifier: the broker refused a batch of access reports as malformed; dropped');
  });

  it('bounds the buffer: beyond maxBuffered the oldest are dropped, counted and logged once', async () => {
    const { broker, verifier, jwt, logs } = await setUp({ maxBatch: 2, maxBuffered: 5, flushIntervalMs: 60_000 });
    broker.failReports = 1;
    verifier.verifySync(jwt, opts);
    verifier.verifySync(jwt, opts);
    await verifier.flush(); // fails; the two stay queued
    const kept = broker.reportCalls[0]!.map((use) => use.reportId);
    for (let i = 0; i < 6; i++) verifier.verifySync(jwt, opts);
    expect(verifier.stats().reports).toMatchObject({ buffered: 5, dropped: 3 });
    expect(logs.filter((line) => line.includes('buffer full'))).toHaveLength(1);
    await verifier.flush();
    const sent = broker.reportCalls.slice(1).flat();
    expect(sent).toHaveLength(5);
    for (const id of kept) expect(sent.map((use) => use.reportId)).not.toContain(id);
  });

  it('flushes once at close', async () => {
    const { broker, verifier, jwt } = await setUp({ flushIntervalMs: 60_000 });
    verifier.verifySync(jwt, opts);
    await verifier.close();
    expect(broker.reportCalls).toHaveLength(1);
    expect(verifier.stats().reports.sent).toBe(1);
  });

  it('sends nothing with reporting false', async () => {
    const { broker, verifier, jwt } = await setUp(false);
    verifier.verifySync(jwt, opts);
    await verifier.close();
    expect(broker.reportCalls).toHaveLength(0);
  });
});
