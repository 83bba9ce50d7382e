/**
 * CreateTask's policy decision as the domain applies it: a denial is recorded on the caller's
 * chain before the call fails, require_approval decides the first state, the rule that allowed
 * it and the policy version go on the record, and the task hash is the spec's. How a policy
 * decides each request is test/policy/policy.test.ts; this file is what the task domain does
 * with the decision, without a database (MemoryStore answers the one operation sent).
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import { StaticPolicySource, type PolicySource } from '../../src/policy/policy-source.js';
import { TaskLifecycle } from '../../src/tasks/lifecycle.js';
import { taskHash } from '../../src/tasks/spec.js';
import type { TaskSpecInput } from '../../src/tasks/validation.js';
import { actor, INVOICES, ISSUER, MemoryStore, NOW, policyOf, testKey, WORKER } from './fakes.js';

let store: MemoryStore;
/** CreateTask signs nothing; the lifecycle needs a key ring all the same. */
const key = testKey();

async function lifecycle(policy: PolicySource = policyOf()): Promise<TaskLifecycle> {
  return new TaskLifecycle({ keys: (await key).ring, issuer: ISSUER, policy, clock: () => NOW, store });
}

function input(overrides: Partial<TaskSpecInput> = {}): TaskSpecInput {
  return {
    action: 'invoice.export',
    resources: ['invoices/2030-01'],
    audience: INVOICES,
    scopes: ['invoices:read'],
    params: { format: 'csv' },
    ttlSeconds: 600,
    ...overrides,
  };
}

async function denial(call: Promise<unknown>): Promise<BrokerError> {
  const err = await call.then(
    () => expect.unreachable('the call succeeded'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  return err as BrokerError;
}

beforeEach(() => {
  store = new MemoryStore();
});

describe('allowed', () => {
  it('creates an ACTIVE task bound to the caller, the hash of its spec and the rule that allowed it', async () => {
    const { task, replayed } = await (await lifecycle()).createTask(actor(), input());
    expect(replayed).toBe(false);
    expect(task).toMatchObject({
      taskId: expect.stringMatching(/^tsk_[A-Za-z0-9_-]{24}$/),
      ownerSpiffeId: WORKER,
      state: 'ACTIVE',
      createdAt: NOW,
      expiresAt: new Date(NOW.getTime() + 600_000),
      policyRule: 'billing',
      taskHash: taskHash({ ...input(), ttlSeconds: 600 }),
      endedAt: null,
      approvedBy: null,
    });
  });

  it('records the decision with the policy version in the one operation sent', async () => {
    const policy = policyOf();
    const { task } = await (await lifecycle(policy)).createTask(actor(), input(), 'key-1');
    expect(store.ops).toHaveLength(1);
    expect(store.sent('create')[0]).toMatchObject({
      actor: WORKER,
      idem: 'key-1',
      task: { task_id: task.taskId, state: 'ACTIVE', policy_rule: 'billing' },
      details: { task_hash: task.taskHash, state: 'ACTIVE', policy_rule: 'billing', policy_digest: policy.current()!.digest, idempotency_key: 'key-1' },
    });
  });

  it('starts PENDING_APPROVAL when the rule requires approval', async () => {
    const { task } = await (await lifecycle(policyOf('    require_approval: true\n'))).createTask(actor(), input());
    expect(task.state).toBe('PENDING_APPROVAL');
    expect(store.sent('create')[0]).toMatchObject({ details: { state: 'PENDING_APPROVAL' } });
  });

  it("takes the broker's default task ttl when none is given, and checks it against max_task_ttl", async () => {
    const broker = await lifecycle(policyOf('    max_task_ttl: 15m\n'));
    const { task } = await broker.createTask(actor(), input({ ttlSeconds: undefined }));
    expect(task.spec.ttlSeconds).toBe(broker.limits.defaultTaskTtlSeconds);
    expect(task.expiresAt.getTime() - NOW.getTime()).toBe(broker.limits.defaultTaskTtlSeconds * 1000);
    const strict = await lifecycle(policyOf('    max_task_ttl: 10m\n'));
    const err = await denial(strict.createTask(actor(), input({ ttlSeconds: undefined })));
    expect(err.message).toBe(`denied by policy: rule "billing": task ttl ${strict.limits.defaultTaskTtlSeconds}s exceeds max_task_ttl 600s`);
  });
});

describe('denied', () => {
  it.each<[string, Partial<TaskSpecInput>, string]>([
    ['an action no rule allows', { action: 'invoice.delete' }, 'rule "billing": action "invoice.delete" is not allowed'],
    [
      'an audience no rule allows',
      { audience: 'spiffe://example.org/ns/billing/sa/ledger' },
      'rule "billing": audience spiffe://example.org/ns/billing/sa/ledger is not allowed',
    ],
    ['a scope no rule allows', { scopes: ['invoices:read', 'invoices:write'] }, 'rule "billing": scope "invoices:write" is not allowed'],
    ['a task ttl above max_task_ttl', { ttlSeconds: 3601 }, 'rule "billing": task ttl 3601s exceeds max_task_ttl 3600s'],
  ])('%s: PERMISSION_DENIED, recorded on the caller chain first, no task written', async (_name, overrides, reason) => {
    const policy = policyOf('    max_task_ttl: 1h\n');
    const err = await denial((await lifecycle(policy)).createTask(actor(), input(overrides)));
    expect(err).toMatchObject({ kind: 'permission-denied', message: `denied by policy: ${reason}` });
    expect(store.ops).toEqual([
      expect.objectContaining({
        op: 'event',
        task_id: null,
        type: 'access.denied',
        actor: WORKER,
        details: expect.objectContaining({ operation: 'CreateTask', reason: `policy: ${reason}`, policy_digest: policy.current()!.digest }),
      }),
    ]);
  });

  it('a caller no rule names', async () => {
    const other = 'spiffe://example.org/ns/billing/sa/intruder';
    const err = await denial((await lifecycle()).createTask(actor(other), input()));
    expect(err.message).toBe(`denied by policy: no rule matches caller ${other}`);
    expect(store.sent('create')).toEqual([]);
  });

  it('everything, when no policy is loaded', async () => {
    const err = await denial((await lifecycle(new StaticPolicySource(undefined))).createTask(actor(), input()));
    expect(err).toMatchObject({ kind: 'permission-denied', message: 'denied by policy: no policy is loaded: every request is denied' });
    expect(store.ops).toEqual([expect.objectContaining({ type: 'access.denied', details: expect.objectContaining({ policy_digest: '' }) })]);
  });

  it('an invalid spec is INVALID_ARGUMENT before the policy is asked, and nothing is recorded', async () => {
    const err = await denial((await lifecycle(new StaticPolicySource(undefined))).createTask(actor(), input({ scopes: [] })));
    expect(err).toMatchObject({ kind: 'invalid-argument', message: 'spec.scopes: at least one scope is required' });
    expect(store.ops).toEqual([]);
  });
});
