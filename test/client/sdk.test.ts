/**
 * The workload SDK against a real broker: plain JavaScript in and out (Date timestamps, short
 * state names, params as JSON), every error a TaskBrokerError subclass with its code, details and
 * reason, the retry hint read from the trailer, and the broker authenticated by SPIFFE ID.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  AlreadyExistsError,
  connectTaskBroker,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  TaskBrokerError,
  toTaskBrokerError,
  UnavailableError,
} from '../../src/client/index.js';
import { certificateThumbprint } from '../../src/spiffe/certificate.js';
import { cleanupsAfterEach } from '../helpers/cleanup.js';
import { trustDomainPki } from '../helpers/pki.js';
import { agentFor, API_ID, BROKER_ID, startBroker, WORKER_ID } from './fixture.js';

const cleanups = cleanupsAfterEach();

const spec = { action: 'invoice.export', resources: ['invoices/2026'], audience: API_ID, scopes: ['invoices:read', 'invoices:list'] };

describe('the workload SDK', () => {
  it('creates, reads, issues, completes and cancels with plain JavaScript values', async () => {
    const { pki, address } = await startBroker(cleanups);
    const { agent, svid } = await agentFor(cleanups, pki, WORKER_ID);
    const client = await connectTaskBroker({ address, serverId: BROKER_ID, workloadApi: { address: agent.address } });
    cleanups.push(() => client.close());

    expect(await client.whoAmI()).toMatchObject({ spiffeId: WORKER_ID, certThumbprint: certificateThumbprint(svid.der) });
    const params = { month: '2026-01', limit: 10, nested: { ok: true, list: [1, 'two', null] } };
    const created = await client.createTask({ ...spec, params, ttlSeconds: 600, idempotencyKey: 'export-jan' });
    expect(created.replayed).toBe(false);
    expect(created.task).toMatchObject({ ownerSpiffeId: WORKER_ID, state: 'ACTIVE', spec: { ...spec, params, ttlSeconds: 600 }, endedAt: null });
    expect(created.task.createdAt).toBeInstanceOf(Date);
    expect(created.task.expiresAt.getTime() - created.task.createdAt.getTime()).toBe(600_000);
    expect(JSON.parse(created.canonicalSpec)).toMatchObject({ params });
    const { taskId } = created.task;
    expect((await client.createTask({ ...spec, params, ttlSeconds: 600, idempotencyKey: 'export-jan' })).replayed).toBe(true);
    expect(await client.getTask(taskId)).toEqual(created.task);

    const token = await client.issueToken(taskId, { scopes: ['invoices:read'], ttlSeconds: 60 });
    expect(token).toMatchObject({ scopes: ['invoices:read'], token: expect.stringMatching(/^[\w-]+\.[\w-]+\.[\w-]+$/) });
    expect(token.expiresAt.getTime()).toBeLessThanOrEqual(Date.now() + 61_000);
    const done = await client.completeTask(taskId, 'exported');
    expect(done).toMatchObject({ revokedTokens: 1, task: { state: 'COMPLETED', endedBy: WORKER_ID, endReason: 'exported' } });
    expect(done.task.endedAt).toBeInstanceOf(Date);

    const other = await client.createTask(spec);
    expect((await client.cancelTask(other.task.taskId, 'not needed')).task.state).toBe('CANCELLED');
    // The client closes the source it created.
    client.close();
    expect((client.source as { status(): { connected: boolean } }).status().connected).toBe(false);
  });

  it('throws TaskBrokerError subclasses with code, details and reason', async () => {
    const { pki, address } = await startBroker(cleanups);
    const { agent } = await agentFor(cleanups, pki, WORKER_ID);
    const client = await connectTaskBroker({ address, serverId: BROKER_ID, workloadApi: { address: agent.address } });
    cleanups.push(() => client.close());
    const { task } = await client.createTask({ ...spec, idempotencyKey: 'k' });

    const notFound = await client.getTask('tsk_AAAAAAAAAAAAAAAAAAAAAAAA').catch((e: unknown) => e);
    expect(notFound).toBeInstanceOf(NotFoundError);
    expect(notFound).toBeInstanceOf(TaskBrokerError);
    expect(notFound).toMatchObject({ code: grpc.status.NOT_FOUND, reason: 'not-found', details: expect.any(String), retryable: false });
    await expect(client.issueToken(task.taskId, { scopes: ['invoices:delete'] })).rejects.toBeInstanceOf(PermissionDeniedError);
    await expect(client.createTask({ ...spec, action: 'other', idempotencyKey: 'k' })).rejects.toBeInstanceOf(AlreadyExistsError);
    await client.completeTask(task.taskId);
    await expect(client.issueToken(task.taskId)).rejects.toMatchObject({ name: 'FailedPreconditionError', reason: 'failed-precondition' });
    await expect(client.issueToken(task.taskId)).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(client.createTask({ ...spec, action: '' })).rejects.toMatchObject({ name: 'InvalidArgumentError', code: grpc.status.INVALID_ARGUMENT });

    // The retry hint comes from the grpc-retry-pushback-ms trailer.
    const trailers = new grpc.Metadata();
    trailers.set('grpc-retry-pushback-ms', '250');
    const busy = toTaskBrokerError(Object.assign(new Error('busy'), { code: grpc.status.RESOURCE_EXHAUSTED, details: 'too many calls', metadata: trailers }));
    expect(busy).toBeInstanceOf(ResourceExhaustedError);
    expect(busy).toMatchObject({ retryAfterMs: 250, retryable: true, details: 'too many calls', message: 'RESOURCE_EXHAUSTED: too many calls' });
  });

  it('refuses a broker that is not serverId', async () => {
    const { pki, address } = await startBroker(cleanups);
    const { agent } = await agentFor(cleanups, pki, WORKER_ID);
    const client = await connectTaskBroker({ address, serverId: 'spiffe://a.test/not-the-broker', workloadApi: { address: agent.address } });
    cleanups.push(() => client.close());
    const refused = await client.whoAmI({ deadlineMs: 5_000 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UnavailableError);
    expect((refused as UnavailableError).details).toMatch(/broker presented spiffe:\/\/a\.test\/task-broker, expected spiffe:\/\/a\.test\/not-the-broker/);
  });

  it('workloadApiX509Source rejects clearly when no SVID arrives in time', async () => {
    const { agent } = await agentFor(cleanups, await trustDomainPki('a.test'), WORKER_ID);
    agent.setX509Svid({ svids: [] });
    const connecting = connectTaskBroker({ address: '127.0.0.1:1', serverId: BROKER_ID, workloadApi: { address: agent.address, timeoutMs: 200 } });
    await expect(connecting).rejects.toThrow(/no usable X509-SVID from the Workload API at unix:\/\/.*agent\.sock within 200 ms/);
  });
});
