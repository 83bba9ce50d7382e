/**
 * Token contract v2 through the verifier SDK against a real broker over mTLS: a use-limited token
 * is verified online even in 'stream' mode (accepted max_uses times, then USES_EXHAUSTED, which
 * an offline check could never say), verifySync refuses it without spending a use, a delegated
 * task's token shows its chain, and a token of a newer contract signed with the broker's own key
 * is MALFORMED.
 */
import { sign, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { SigningKey } from '../../src/tokens/keyring.js';
import { createTaskTokenVerifier, type TaskTokenVerifier } from '../../src/verifier/index.js';
import { API, STRANGER, WORKER, startTestBroker, type TestBroker } from '../helpers/broker.js';

/** `token` with its claims changed by `edit`, signed again with the broker's own signing key. */
function resigned(token: string, key: SigningKey, edit: (claims: Record<string, unknown>) => void): string {
  const [header, payload] = token.split('.') as [string, string, string];
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
  edit(claims);
  const input = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  const signature =
    key.alg === 'ES256'
      ? sign('sha256', Buffer.from(input), { key: key.privateKey as never, dsaEncoding: 'ieee-p1363' })
      : sign(null, Buffer.from(input), key.privateKey as never);
  return `${input}.${signature.toString('base64url')}`;
}

describe('verifier SDK and token contract v2 against a real broker (postgres)', () => {
  let tb: TestBroker;
  let worker: BrokerClient;
  let api: BrokerClient;
  let presenter: X509Certificate;
  let verifier: TaskTokenVerifier;

  beforeAll(async () => {
    // The permissive test policy allows delegation.
    tb = await startTestBroker('postgres');
    worker = await tb.client(WORKER);
    api = await tb.client(API);
    presenter = new X509Certificate(tb.svidOf(WORKER).certChainPem);
    verifier = createTaskTokenVerifier({ broker: api, revocations: 'stream', reporting: false });
    await verifier.ready();
  }, 120_000);
  afterAll(async () => {
    await verifier?.close();
    await tb?.close();
  });

  async function liveTask(): Promise<string> {
    const created = await worker.createTask({ spec: { action: 'invoice.export', audience: API, scopes: ['read'], ttl: { seconds: 600 } } });
    return created.task!.taskId;
  }

  it("verifies a max_uses token online in 'stream' mode: accepted twice, then USES_EXHAUSTED", async () => {
    const taskId = await liveTask();
    const { token } = await worker.issueToken({ taskId, maxUses: 2 });
    const opts = { presenterCertificate: presenter };
    // verifySync cannot count a use: refused, pointing at verify(), and no use is spent.
    const sync = verifier.verifySync(token, opts);
    expect(sync).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN', maxUses: 2 });
    expect(sync.detail).toMatch(/use verify\(\)/);

    expect(await verifier.verify(token, opts)).toMatchObject({ valid: true, reason: 'VALID', maxUses: 2, usesLeft: 1, claims: { ver: 2, max_uses: 2 } });
    expect(await verifier.verify(token, opts)).toMatchObject({ valid: true, reason: 'VALID', usesLeft: 0 });
    // Offline, the third presentation would be as valid as the first: only the broker's count refuses it.
    expect(await verifier.verify(token, opts)).toMatchObject({ valid: false, reason: 'USES_EXHAUSTED', maxUses: 2 });
    expect(await verifier.verify(token, opts)).toMatchObject({ valid: false, reason: 'USES_EXHAUSTED' });

    // A token of the same task without max_uses stays an offline matter: accepted as often as presented.
    const plain = (await worker.issueToken({ taskId })).token;
    for (let i = 0; i < 3; i++) expect(await verifier.verify(plain, opts)).toMatchObject({ valid: true, actors: [] });
    expect(verifier.verifySync(plain, opts)).toMatchObject({ valid: true });
  });

  it("a delegated task's token shows the delegators and the parent", async () => {
    const parentTaskId = await liveTask();
    const delegated = await worker.delegateTask({ parentTaskId, delegatee: STRANGER, spec: null, idempotencyKey: '', subjectToken: '' });
    const child = delegated.task!;
    expect(child).toMatchObject({ ownerSpiffeId: STRANGER, parentTaskId, rootTaskId: parentTaskId, depth: 1, delegators: [WORKER] });
    const stranger = await tb.client(STRANGER);
    const { token } = await stranger.issueToken({ taskId: child.taskId });
    const result = await verifier.verify(token, { presenterCertificate: new X509Certificate(tb.svidOf(STRANGER).certChainPem) });
    expect(result).toMatchObject({
      valid: true,
      actors: [WORKER],
      parentTaskId,
      claims: { sub: STRANGER, act: { sub: WORKER }, parent_task_id: parentTaskId },
    });
  });

  it('refuses a token of a newer contract (ver 3) signed with the broker’s key, as the broker does', async () => {
    const { token } = await worker.issueToken({ taskId: await liveTask() });
    const key = await tb.broker.keys.activeKey();
    const v3 = resigned(token, key, (claims) => (claims.ver = 3));
    // The re-signing itself is sound: the same claims at ver 2 are accepted.
    expect(
      await verifier.verify(
        resigned(token, key, () => undefined),
        { presenterCertificate: presenter },
      ),
    ).toMatchObject({ valid: true });
    const result = await verifier.verify(v3, { presenterCertificate: presenter });
    expect(result).toMatchObject({ valid: false, reason: 'MALFORMED' });
    expect(result.detail).toMatch(/token contract version 3/);
    const online = await api.verifyToken({ token: v3, presenterCertThumbprint: '', skipBindingCheck: true });
    expect(online).toMatchObject({ valid: false, reason: 'VERIFY_TOKEN_REASON_MALFORMED' });
  });
});
