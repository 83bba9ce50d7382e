/**
 * The broker's readiness checks: database reachable, migrations applied, its own SVID present
 * and unexpired (plus whatever its identity source says about itself), a policy loaded.
 */
import type { PolicySource } from '../policy/policy-source.js';
import type { Store } from '../store/database.js';
import { loadMigrations, migrationStatus, type Migration } from '../store/migrate.js';
import type { X509SvidSource } from '../spiffe/x509-source.js';
import type { CheckResult, ReadinessCheck } from './readiness.js';

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
 * What an identity source may tell about itself beyond `current()`: the Workload API source
 * knows whether its stream is healthy and when the SVID and bundles last changed. Any source
 * with `ready()` contributes it to the SVID check; `status()` (non-secret facts) is shown with it.
 */
export interface IdentityReadiness {
  ready(): boolean;
  status?(): unknown;
}

function readinessOf(source: object): IdentityReadiness | undefined {
  const s = source as Partial<IdentityReadiness>;
  return typeof s.ready === 'function' ? (s as IdentityReadiness) : undefined;
}

function statusOf(source: object): Record<string, unknown> {
  const s = source as Partial<IdentityReadiness>;
  if (typeof s.status !== 'function') return {};
  const status = s.status.call(source);
  return status !== undefined && status !== null ? { status } : {};
}

/** The broker's own SVID is present and unexpired, and its source (if it can tell) is ready. */
export function svidCheck(identity: X509SvidSource, clock: () => Date = () => new Date()): ReadinessCheck {
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
      const source = readinessOf(identity);
      if (source && !source.ready.call(identity)) return { ok: false, reason: 'the SVID source is not ready', detail };
      return { ok: true, detail };
    },
  };
}
