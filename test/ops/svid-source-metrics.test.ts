/**
 * When the SVID comes from a stream (the Workload API), metrics say whether the stream is up and
 * how long ago it last delivered, so "the agent is gone and we serve on the last SVID" shows.
 */
import { describe, expect, it } from 'vitest';
import { BrokerMetrics } from '../../src/observability/metrics.js';

function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{source="workload_api"} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

describe('SVID source metrics', () => {
  it('report connection state and the age of the last update, and nothing for file-based SVIDs', async () => {
    let now = new Date('2026-11-25T12:00:00Z');
    const metrics = new BrokerMetrics({ defaultMetrics: false, clock: () => now });
    expect(sample(await metrics.registry.metrics(), 'task_broker_svid_source_connected')).toBeUndefined();

    let status = { connected: true, lastUpdate: new Date('2026-11-25T11:59:30Z') as Date | undefined };
    metrics.watchSvidSource(() => status);
    let text = await metrics.registry.metrics();
    expect(sample(text, 'task_broker_svid_source_connected')).toBe(1);
    expect(sample(text, 'task_broker_svid_source_last_update_age_seconds')).toBe(30);

    status = { connected: false, lastUpdate: status.lastUpdate };
    now = new Date('2026-11-25T12:10:00Z');
    text = await metrics.registry.metrics();
    expect(sample(text, 'task_broker_svid_source_connected')).toBe(0);
    expect(sample(text, 'task_broker_svid_source_last_update_age_seconds')).toBe(630);
  });
});
