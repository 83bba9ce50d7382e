/**
 * Small clients for the ops surface: gRPC health over mTLS, the HTTP endpoints, and a reader for
 * the Prometheus text format.
 */
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import { mintX509Svid } from '../../src/devca/certificates.js';
import { BROKER_ID, type TestBroker } from '../helpers/broker.js';
import { pemOf } from '../helpers/pki.js';

export const HEALTH_SERVICES = ['', 'taskbroker.v1.TaskBroker', 'taskbroker.v1.TaskBrokerAdmin'] as const;

interface HealthClient extends grpc.Client {
  check(
    request: { service: string },
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: { status: string }) => void,
  ): void;
}

const HealthClientCtor = grpc.makeClientConstructor(healthService, 'Health') as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ChannelOptions,
) => HealthClient;

/** A gRPC health client presenting a fresh a.test workload SVID. */
export async function healthClient(
  t: TestBroker,
  spiffeId = 'spiffe://a.test/ns/ops/sa/prober',
): Promise<{ check(service: string): Promise<string>; close(): void }> {
  const svid = await pemOf(await mintX509Svid(t.a.root, spiffeId));
  const client = new HealthClientCtor(t.address, svidChannelCredentials({ ...svid, bundle: t.a.root.pem, serverId: BROKER_ID }), svidChannelOptions());
  return {
    check: (service) =>
      new Promise((resolve, reject) =>
        client.check({ service }, new grpc.Metadata(), { deadline: Date.now() + 5_000 }, (err, res) => (err ? reject(err) : resolve(res?.status ?? 'UNKNOWN'))),
      ),
    close: () => client.close(),
  };
}

export async function healthOfAll(client: { check(service: string): Promise<string> }): Promise<Record<string, string>> {
  return Object.fromEntries(await Promise.all(HEALTH_SERVICES.map(async (s) => [s, await client.check(s)] as const)));
}

export interface ReadyzBody {
  status: 'ready' | 'not ready';
  shuttingDown?: boolean;
  checkedAt?: string;
  checks: Record<string, { ok: boolean; reason?: string; durationMs: number; detail?: Record<string, unknown> }>;
}

export async function readyz(t: TestBroker): Promise<{ status: number; body: ReadyzBody }> {
  const res = await fetch(`${t.opsUrl}/readyz`);
  return { status: res.status, body: (await res.json()) as ReadyzBody };
}

export async function scrape(t: TestBroker): Promise<string> {
  const res = await fetch(`${t.opsUrl}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/** The value of the sample `name{labels}` (labels matched exactly, in any order); undefined when absent. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = (match[2] ?? '')
      .split(/,(?=[a-zA-Z_]+=")/)
      .filter(Boolean)
      .sort()
      .join(',');
    if (have === wanted) return Number(match[3]);
  }
  return undefined;
}

/** Polls `fn` until it returns true. */
export async function eventually(fn: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
