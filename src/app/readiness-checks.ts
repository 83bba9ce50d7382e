/**
 * The broker's readiness checks: database reachable, migrations applied, its own SVID present
 * and unexpired (plus whatever its identity source says about itself), a policy loaded. They sit
 * in the composition root because they look at the store, the policy and the SVID source at once.
 */
import { fileDescriptorsCheck, writesCheck } from '../observability/capacity-checks.js';
import type { Logger } from '../observability/logger.js';
import type { BrokerMetrics } from '../observability/metrics.js';
import { Readiness, type CheckResult, type ReadinessCheck } from '../observability/readiness.js';
import type { PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import { loadMigrations, migrationStatus, type Migration } from '../store/migrate.js';
import type { TlsIdentity } from '../spiffe/x509-source.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';

/** `Store.ping` within `timeoutMs`. */
export function databaseCheck(store: Pick<Store, 'ping' | 'kind'>, timeoutMs = 1_000): ReadinessCheck {
  return {
    name: 'database',
    timeoutMs,
    run: async () => {
      await store.ping();
      return { ok: true, detail: { kind: store.kind } };
    },
  };
}

/**
 * Every migration this build knows is applied. A passing result is reused for `cacheMs`
 * (migrations are forward-only, so it rarely changes); a failing one is checked again each time.
 */
export function migrationsCheck(store: Pick<Store, 'db'>, options: { cacheMs?: number; timeoutMs?: number; clock?: () => number } = {}): ReadinessCheck {
  const cacheMs = options.cacheMs ?? 60_000;
  const now = options.clock ?? Date.now;
  let migrations: Migration[] | undefined;
  let passedAt: number | undefined;
  let passed: CheckResult | undefined;
  return {
    name: 'migrations',
    timeoutMs: options.timeoutMs ?? 2_000,
    run: async () => {
      if (passed && passedAt !== undefined && now() - passedAt < cacheMs) return passed;
      migrations ??= await loadMigrations();
      const status = await migrationStatus(store.db, migrations);
      if (status.pending.length > 0) {
        passed = undefined;
        return { ok: false, reason: `migrations pending: ${status.pending.join(', ')}` };
      }
      passed = { ok: true, detail: { applied: status.applied.length } };
      passedAt = now();
      return passed;
    },
  };
}

/** A policy is in force (without one every task and admin request is denied). */
export function policyCheck(policy: PolicySource): ReadinessCheck {
  return {
    name: 'policy',
    run: () => {
      const current = policy.current();
      if (!current) return { ok: false, reason: 'no policy is loaded: every task and admin request would be denied' };
      return { ok: true, detail: { digest: current.digest } };
    },
  };
}

/**
 * The SVID source as the check sees it. A streaming source (the Workload API) also knows whether
 * its stream can serve (`ready()`) and has non-secret facts to show with the verdict (`status()`).
 */
export interface SvidCheckSource {
  current(): Pick<TlsIdentity, 'spiffeId' | 'notAfter'> | undefined;
  ready?(): boolean;
  status?(): unknown;
}

function statusOf(source: SvidCheckSource): Record<string, unknown> {
  const status = source.status?.();
  return status !== undefined && status !== null ? { status } : {};
}

/** The broker's own SVID is present and unexpired, and its source (if it can tell) is ready. */
export function svidCheck(identity: SvidCheckSource, clock: () => Date = () => new Date()): ReadinessCheck {
  return {
    name: 'svid',
    run: (): CheckResult => {
      const status = statusOf(identity);
      const current = identity.current();
      if (!current) return { ok: false, reason: 'the broker has no SVID yet', detail: status };
      const detail = { spiffeId: current.spiffeId.toString(), notAfter: current.notAfter.toISOString(), ...status };
      if (current.notAfter.getTime() <= clock().getTime()) {
        return { ok: false, reason: `the broker's SVID expired at ${current.notAfter.toISOString()}`, detail };
      }
      if (identity.ready?.() === false) return { ok: false, reason: 'the SVID source is not ready', detail };
      return { ok: true, detail };
    },
  };
}

export interface BrokerReadinessOptions {
  logger: Logger;
  clock: () => Date;
  store: Store;
  identity: X509SvidSource;
  policy: PolicySource;
  metrics: BrokerMetrics;
  /** How often readiness is evaluated on its own (default: Readiness's; 0: only on demand). */
  intervalMs?: number;
  /** How long a database ping may take before the broker counts as not ready (default: databaseCheck's). */
  databasePingTimeoutMs?: number;
  /** Readiness fails after this many write transactions failed in a row (default: writesCheck's). */
  writeFailureThreshold?: number;
  /** Checks added to the built-in ones. */
  extraChecks?: readonly ReadinessCheck[];
}

/**
 * The broker's readiness, evaluated once before this resolves, then on demand (/readyz) and
 * whenever the policy or the SVID changes; start() adds the periodic evaluation. close() stops
 * following the changes and the checks.
 */
export async function brokerReadiness(options: BrokerReadinessOptions): Promise<{ readiness: Readiness; close: () => Promise<void> }> {
  const { store, identity, policy, clock } = options;
  const readiness = new Readiness({ logger: options.logger, intervalMs: options.intervalMs, clock });
  readiness
    .add(databaseCheck(store, options.databasePingTimeoutMs))
    .add(migrationsCheck(store))
    .add(svidCheck(identity, clock))
    .add(policyCheck(policy))
    .add(writesCheck(store, { threshold: options.writeFailureThreshold }))
    .add(fileDescriptorsCheck());
  for (const check of options.extraChecks ?? []) readiness.add(check);
  options.metrics.watchReadiness(() => readiness.report);
  const reevaluate = () => void readiness.evaluate();
  const unsubscribes = [policy.onChange(reevaluate), identity.onChange(reevaluate)];
  const close = async () => {
    for (const unsubscribe of unsubscribes) unsubscribe();
    await readiness.close();
  };
  try {
    await readiness.evaluate();
  } catch (err) {
    await close();
    throw err;
  }
  return { readiness, close };
}
