/**
 * The bound on what a revocation stream may leave unsent, with a real broker and a real client
 * whose HTTP/2 window is small: a snapshot larger than the bound goes through at the receiver's
 * pace, while a receiver that stops reading live revocations is let go with RESOURCE_EXHAUSTED
 * (it resumes with its cursor) instead of making the broker hold them without limit.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { svidChannelCredentials, svidChannelOptions } from '../../src/client/credentials.js';
import type { WatchRevocationsResponse__Output } from '../../src/gen/taskbroker/v1/WatchRevocationsResponse.js';
import { API, BROKER_ID, WORKER, startTestBroker, type TestBroker } from '../helpers/broker.js';

const BOUND = 4096;

describe('a revocation stream receiver that does not read (postgres)', () => {
  let tb: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;

  beforeAll(async () => {
    tb = await startTestBroker('postgres', { revocationStreamLimits: { maxBufferedBytes: BOUND, maxPerMessage: 20 } });
    worker = await tb.client(WORKER);
    (await tb.client(API)).close();
    // A 1 KiB HTTP/2 window: the broker's messages wait in its own buffer as soon as the receiver stops reading.
    api = new BrokerClient({
      address: tb.address,
      credentials: svidChannelCredentials({ ...tb.svidOf(API), bundle: tb.a.root.pem, serverId: BROKER_ID }),
      channelOptions: { ...svidChannelOptions(), 'grpc-node.flow_control_window': 1024 },
    });
  }, 120_000);
  afterAll(async () => {
    api?.close();
    await tb?.close();
  });

  async function revoke(n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const { task } = await worker.createTask({ spec: { action: 'invoice.export', audience: API, scopes: ['read'], ttl: { seconds: 600 } } });
      await worker.issueToken({ taskId: task!.taskId });
      await worker.completeTask(task!.taskId, `done, with a reason long enough to fill the window sooner ${'.'.repeat(100)}`);
      ids.push(task!.taskId);
    }
    return ids;
  }

  it('gets a snapshot larger than the bound, at its own pace', async () => {
    const ids = await revoke(80); // about 80 × 200 bytes, four times the bound, in pages of 20
    const stream = api.watchRevocations();
    const seen = new Set<string>();
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (m: WatchRevocationsResponse__Output) => {
        for (const r of m.revocations) seen.add(r.taskId);
        if (ids.every((id) => seen.has(id))) resolve();
      });
      stream.on('error', reject);
    });
    stream.cancel();
  });

  it('is let go with RESOURCE_EXHAUSTED when live revocations pile up unread', async () => {
    const stream = api.watchRevocations();
    const failed = new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
    await new Promise<void>((resolve) => stream.once('data', () => resolve()));
    stream.pause();
    await revoke(60);
    stream.resume();
    stream.on('data', () => undefined);
    const error = await failed;
    expect(error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(error.details).toMatch(/does not keep up/);
  });
});
