/**
 * The readiness machinery on its own: verdicts, reasons, timeouts that do not pile up, change
 * notifications, shutdown, the HTTP answers, and identity sources that report on themselves.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mintX509Svid } from '../../src/devca/certificates.js';
import { healthzRoute, readyzRoute } from '../../src/http/ops-routes.js';
import { silentLogger } from '../../src/observability/logger.js';
import { Readiness, type CheckResult, type ReadinessReport } from '../../src/observability/readiness.js';
import { svidCheck } from '../../src/app/readiness-checks.js';
import { StaticX509SvidSource, tlsIdentityFrom, type X509SvidSource, type TlsIdentity } from '../../src/spiffe/x509-source.js';
import { pemOf, trustDomainPki } from '../helpers/pki.js';
import type { IncomingMessage } from 'node:http';

const req = {} as IncomingMessage;
const opened: Readiness[] = [];
const readiness = (intervalMs = 0, timeoutMs = 200) => {
  const r = new Readiness({ logger: silentLogger(), intervalMs, timeoutMs });
  opened.push(r);
  return r;
};
afterEach(async () => {
  for (const r of opened.splice(0)) await r.close();
});

describe('Readiness', () => {
  it('is not ready before the first evaluation, then ready when every check passes', async () => {
    const r = readiness()
      .add({ name: 'a', run: () => ({ ok: true }) })
      .add({ name: 'b', run: () => Promise.resolve({ ok: true, detail: { x: 1 } }) });
    expect(r.ready).toBe(false);
    const report = await r.evaluate();
    expect(report.ready).toBe(true);
    expect(report.checks.b).toMatchObject({ ok: true, detail: { x: 1 } });
    expect(report.checkedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('a failing, throwing or hanging check makes it not ready, each with its reason', async () => {
    const r = readiness()
      .add({ name: 'fails', run: () => ({ ok: false, reason: 'nope' }) })
      .add({
        name: 'throws',
        run: () => {
          throw new Error('boom');
        },
      })
      .add({ name: 'hangs', timeoutMs: 50, run: () => new Promise<CheckResult>(() => undefined) })
      .add({ name: 'fine', run: () => ({ ok: true }) });
    const report = await r.evaluate();
    expect(report.ready).toBe(false);
    expect(report.checks).toMatchObject({
      fails: { ok: false, reason: 'nope' },
      throws: { ok: false, reason: 'boom' },
      hangs: { ok: false, reason: 'no answer within 50 ms' },
      fine: { ok: true },
    });
  });

  it('a check still running is awaited by the next evaluation, not started again', async () => {
    let runs = 0;
    let finish: (r: CheckResult) => void = () => undefined;
    const r = readiness().add({
      name: 'slow',
      timeoutMs: 30,
      run: () => {
        runs += 1;
        if (runs > 1) return { ok: true };
        return new Promise<CheckResult>((resolve) => (finish = resolve));
      },
    });
    expect((await r.evaluate()).ready).toBe(false);
    expect((await r.evaluate()).ready).toBe(false);
    expect(runs).toBe(1);
    finish({ ok: true });
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect((await r.evaluate()).ready).toBe(true);
    expect(runs).toBe(2);
  });

  it('concurrent evaluations share one run of the checks', async () => {
    let runs = 0;
    const r = readiness().add({ name: 'counted', run: () => ((runs += 1), { ok: true }) });
    await Promise.all([r.evaluate(), r.evaluate(), r.evaluate()]);
    expect(runs).toBe(1);
  });

  it('tells listeners when the verdict changes, not on every evaluation', async () => {
    let ok = true;
    const seen: boolean[] = [];
    const r = readiness().add({ name: 'toggle', run: () => (ok ? { ok: true } : { ok: false, reason: 'off' }) });
    r.onChange((report) => seen.push(report.ready));
    await r.evaluate();
    await r.evaluate();
    ok = false;
    await r.evaluate();
    await r.evaluate();
    ok = true;
    await r.evaluate();
    expect(seen).toEqual([true, false, true]);
  });

  it('re-evaluates on its own timer', async () => {
    let runs = 0;
    const r = readiness(20).add({ name: 'ticks', run: () => ((runs += 1), { ok: true }) });
    r.start();
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(runs).toBeGreaterThanOrEqual(3);
    expect(r.ready).toBe(true);
  });

  it('shutdown makes it not ready for good and tells the listeners', async () => {
    const seen: ReadinessReport[] = [];
    const r = readiness().add({ name: 'fine', run: () => ({ ok: true }) });
    await r.evaluate();
    r.onChange((report) => seen.push(report));
    r.shutdown();
    expect(r.ready).toBe(false);
    expect(seen).toEqual([expect.objectContaining({ ready: false, shuttingDown: true })]);
    expect((await r.evaluate()).ready).toBe(false);
    expect((await r.fresh(0)).shuttingDown).toBe(true);
  });

  it('/readyz: 200 or 503 with a small JSON body; /healthz: 200', async () => {
    let ok = true;
    const r = readiness().add({ name: 'db', run: () => (ok ? { ok: true } : { ok: false, reason: 'connection refused' }) });
    const route = readyzRoute(r, { maxAgeMs: 0 });
    const good = await route(req);
    expect(good.status).toBe(200);
    expect(good.headers).toMatchObject({ 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    expect(JSON.parse(good.body.toString())).toMatchObject({ status: 'ready', checks: { db: { ok: true } } });
    ok = false;
    const bad = await route(req);
    expect(bad.status).toBe(503);
    expect(JSON.parse(bad.body.toString())).toMatchObject({ status: 'not ready', checks: { db: { ok: false, reason: 'connection refused' } } });
    const live = await healthzRoute()(req);
    expect(live.status).toBe(200);
    expect(JSON.parse(live.body.toString())).toMatchObject({ status: 'alive' });
  });

  it('/readyz reuses a verdict younger than maxAgeMs', async () => {
    let runs = 0;
    const r = readiness().add({ name: 'counted', run: () => ((runs += 1), { ok: true }) });
    const route = readyzRoute(r, { maxAgeMs: 60_000 });
    await route(req);
    await route(req);
    expect(runs).toBe(1);
  });
});

describe('svidCheck', () => {
  let identity: TlsIdentity;
  const setup = async () => {
    const pki = await trustDomainPki('a.test');
    const pem = await pemOf(await mintX509Svid(pki.root, 'spiffe://a.test/task-broker'));
    identity = tlsIdentityFrom(pem.certChainPem, pem.keyPem);
  };

  it('passes for a present, unexpired SVID and fails once it expired or when there is none', async () => {
    await setup();
    const source = new StaticX509SvidSource(identity);
    expect(await svidCheck(source).run()).toMatchObject({
      ok: true,
      detail: { spiffeId: 'spiffe://a.test/task-broker', notAfter: identity.notAfter.toISOString() },
    });
    const later = () => new Date(identity.notAfter.getTime() + 1);
    expect(await svidCheck(source, later).run()).toMatchObject({ ok: false, reason: expect.stringMatching(/expired at/) });
    const none: X509SvidSource = { current: () => undefined, onChange: () => () => undefined };
    expect(await svidCheck(none).run()).toMatchObject({ ok: false, reason: 'the broker has no SVID yet' });
  });

  it("takes a source's own ready() and status() into account (a Workload API source)", async () => {
    await setup();
    let streaming = false;
    const source = Object.assign(new StaticX509SvidSource(identity), {
      ready: () => streaming,
      status: () => ({ svidUpdatedAt: '2026-01-01T00:00:00.000Z', bundlesUpdatedAt: { 'a.test': '2026-01-01T00:00:00.000Z' } }),
    });
    expect(await svidCheck(source).run()).toMatchObject({
      ok: false,
      reason: 'the SVID source is not ready',
      detail: { status: { svidUpdatedAt: '2026-01-01T00:00:00.000Z' } },
    });
    streaming = true;
    expect(await svidCheck(source).run()).toMatchObject({ ok: true, detail: { status: { bundlesUpdatedAt: { 'a.test': '2026-01-01T00:00:00.000Z' } } } });
    const noSvidYet = { current: () => undefined, onChange: () => () => undefined, ready: () => false, status: () => ({ connected: false }) };
    expect(await svidCheck(noSvidYet).run()).toMatchObject({ ok: false, reason: 'the broker has no SVID yet', detail: { status: { connected: false } } });
  });
});
