/**
 * The bench's scenarios: what each one loads, with which call, in which loop, and the groups
 * `--only` accepts. The table in bench/README.md describes the same list.
 */
import type { CallKind } from './common.js';

export type TargetName = 'echo' | 'oidc' | 'broker-pg' | 'broker-pglite';

export interface Scenario {
  id: string;
  target: TargetName;
  call: CallKind;
  mode: 'closed' | 'open';
  title: string;
  /** What one op is, for the per-op columns. */
  unit: string;
}

const brokerScenarios = (prefix: 'pg' | 'pglite', target: TargetName, store: string): Scenario[] => [
  { id: `${prefix}-create`, target, call: 'create', mode: 'closed', title: `broker/${store} CreateTask`, unit: 'call' },
  { id: `${prefix}-issue`, target, call: 'issue', mode: 'closed', title: `broker/${store} IssueToken`, unit: 'call' },
  { id: `${prefix}-verify`, target, call: 'verify', mode: 'closed', title: `broker/${store} VerifyToken`, unit: 'call' },
  { id: `${prefix}-flow`, target, call: 'flow', mode: 'closed', title: `broker/${store} flow (4 calls)`, unit: 'flow' },
  { id: `${prefix}-issue-open`, target, call: 'issue', mode: 'open', title: `broker/${store} IssueToken open loop`, unit: 'call' },
];

export const SCENARIOS: Scenario[] = [
  { id: 'echo', target: 'echo', call: 'echo', mode: 'closed', title: 'grpc-js mTLS echo', unit: 'call' },
  { id: 'oidc-token', target: 'oidc', call: 'oidc-token', mode: 'closed', title: 'oidc-provider token (JWT)', unit: 'call' },
  { id: 'oidc-token-opaque', target: 'oidc', call: 'oidc-token-opaque', mode: 'closed', title: 'oidc-provider token (opaque)', unit: 'call' },
  { id: 'oidc-introspect', target: 'oidc', call: 'oidc-introspect', mode: 'closed', title: 'oidc-provider introspection', unit: 'call' },
  ...brokerScenarios('pg', 'broker-pg', 'PostgreSQL'),
  ...brokerScenarios('pglite', 'broker-pglite', 'PGlite'),
];

export const GROUPS: Record<string, (s: Scenario) => boolean> = {
  all: () => true,
  oidc: (s) => s.target === 'oidc',
  broker: (s) => s.target.startsWith('broker'),
  pg: (s) => s.target === 'broker-pg',
  pglite: (s) => s.target === 'broker-pglite',
};
