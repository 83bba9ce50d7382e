/**
 * RotateSigningKey and ListSigningKeys over real mTLS on PostgreSQL and PGlite (a whole broker,
 * its lifecycle clock moved by the test): the pre-published rotation as workloads and resource
 * servers see it (token kids, the HTTP JWKS), the refusal while a key is pending, the emergency
 * path, and what the audit trail records.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTaskTrail } from '../../src/audit/audit.js';
import type { AdminClient } from '../../src/client/admin-client.js';
import type { BrokerClient } from '../../src/client/broker-client.js';
import type { ListSigningKeysResponse__Output } from '../../src/gen/taskbroker/v1/ListSigningKeysResponse.js';
import { fromTimestamp } from '../../src/protocol/timestamps.js';
import { DEFAULT_PRE_PUBLICATION_MS } from '../../src/tokens/key-publication.js';
import { API, startTestBroker, WORKER, type TestBroker } from '../helpers/broker.js';
import { STORES } from '../helpers/db.js';
import { ADMIN } from '../helpers/policy.js';

const MAX_TOKEN_TTL_SECONDS = 300;
/** The longest token lifetime plus the key refresh interval (30 s). */
const RETIRED_MS = MAX_TOKEN_TTL_SECONDS * 1000 + 30_000;

describe.each(STORES)('signing-key rotation over TaskBrokerAdmin on %s', (kind) => {
  let t: TestBroker;
  let admin: AdminClient;
  let worker: BrokerClient;

  beforeAll(async () => {
    t = await startTestBroker(kind, { limits: { maxTokenTtlSeconds: MAX_TOKEN_TTL_SECONDS, defaultTokenTtlSeconds: MAX_TOKEN_TTL_SECONDS } });
    [admin, worker] = await Promise.all([t.adminClient(ADMIN), t.client(WORKER)]);
  });
  afterAll(async () => {
    await t?.close();
  });

  /** The kid of a token the worker gets now. */
  async function signingKid(): Promise<string> {
    const { task } = await worker.createTask({ spec: { action: 'job.run', resources: [], audience: API, scopes: ['s'], ttl: { seconds: 600 } } });
    const { token } = await worker.issueToken({ taskId: task!.taskId });
    return decodeProtectedHeader(token).kid ?? '';
  }
  async function jwksKids(): Promise<string[]> {
    const response = await fetch(t.jwksUrl);
    expect(response.headers.get('cache-control')).toBe('public, max-age=60');
    return ((await response.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
  }
  const phases = (res: ListSigningKeysResponse__Output) =>
    res.keys.map((k) => ({
      kid: k.kid,
      state: k.state,
      activatesAt: fromTimestamp(k.activatesAt)?.getTime(),
      retiredAt: fromTimestamp(k.retiredAt)?.getTime(),
      publishedUntil: fromTimestamp(k.publishedUntil)?.getTime(),
      published: k.published,
    }));
  const lastAdminEvent = async () => (await verifyTaskTrail(t.broker.store.db, `actor:${ADMIN}`)).trail.at(-1);

  it('RotateSigningKey adds a NEXT key: in the JWKS at once, signing from activates_at; meanwhile another rotation is FAILED_PRECONDITION', async () => {
    const old = await signingKid();
    const asked = t.clock.now().getTime();
    const rotated = await admin.rotateSigningKey({ reason: 'quarterly rotation' });
    const answered = t.clock.now().getTime();
    const activatesAt = fromTimestamp(rotated.activatesAt)!.getTime();
    expect(rotated).toMatchObject({ state: 'SIGNING_KEY_STATE_NEXT', retiredKid: old, immediate: false, discardedKid: '' });
    expect(activatesAt).toBeGreaterThanOrEqual(asked + DEFAULT_PRE_PUBLICATION_MS);
    expect(activatesAt).toBeLessThanOrEqual(answered + DEFAULT_PRE_PUBLICATION_MS);
    expect(fromTimestamp(rotated.retiredKeyPublishedUntil)!.getTime()).toBe(activatesAt + RETIRED_MS);
    expect(await lastAdminEvent()).toMatchObject({
      type: 'admin.key_rotated',
      details: {
        kid: rotated.kid,
        state: 'NEXT',
        activates_at: new Date(activatesAt).toISOString(),
        retired_kid: old,
        retired_key_published_until: new Date(activatesAt + RETIRED_MS).toISOString(),
        immediate: false,
        reason: 'quarterly rotation',
      },
    });

    expect(await jwksKids()).toEqual([old, rotated.kid]);
    expect(await signingKid()).toBe(old);
    const again = await admin.rotateSigningKey().catch((err: unknown) => err);
    expect(again).toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: expect.stringContaining(`signing key ${rotated.kid} is already waiting to become active, at ${new Date(activatesAt).toISOString()}`),
    });

    const listed = await admin.listSigningKeys();
    expect(listed).toMatchObject({ prePublicationSeconds: 390, retiredPublicationSeconds: 330 });
    expect(phases(listed)).toEqual([
      { kid: rotated.kid, state: 'SIGNING_KEY_STATE_NEXT', activatesAt, retiredAt: undefined, publishedUntil: undefined, published: true },
      { kid: old, state: 'SIGNING_KEY_STATE_ACTIVE', activatesAt: expect.any(Number), retiredAt: undefined, publishedUntil: undefined, published: true },
    ]);
    expect(await lastAdminEvent()).toMatchObject({ type: 'admin.signing_keys_listed', details: { all: false, returned: 2, kids: [rotated.kid, old] } });

    // Past activates_at the next key signs; the old one is RETIRED, in the JWKS for the longest token lifetime (and a refresh interval).
    t.clock.advance(activatesAt - t.clock.now().getTime());
    const promotedAt = t.clock.now().getTime();
    expect(await signingKid()).toBe(rotated.kid);
    expect(await jwksKids()).toEqual([rotated.kid, old]);
    const after = phases(await admin.listSigningKeys());
    expect(after).toEqual([
      {
        kid: rotated.kid,
        state: 'SIGNING_KEY_STATE_ACTIVE',
        activatesAt: expect.any(Number),
        retiredAt: undefined,
        publishedUntil: undefined,
        published: true,
      },
      {
        kid: old,
        state: 'SIGNING_KEY_STATE_RETIRED',
        activatesAt: expect.any(Number),
        retiredAt: after[0]!.activatesAt,
        publishedUntil: after[0]!.activatesAt! + RETIRED_MS,
        published: true,
      },
    ]);
    expect(after[0]!.activatesAt).toBeGreaterThanOrEqual(promotedAt);

    t.clock.advance(RETIRED_MS);
    expect(await jwksKids()).toEqual([rotated.kid]);
    expect(phases(await admin.listSigningKeys()).map((k) => k.kid)).toEqual([rotated.kid]);
    expect(phases(await admin.listSigningKeys({ all: true })).map((k) => [k.kid, k.published])).toEqual([
      [rotated.kid, true],
      [old, false],
    ]);
  });

  it('an immediate rotation signs at once, drops the pending key, and is audited as an emergency', async () => {
    const current = await signingKid();
    const pending = await admin.rotateSigningKey();
    expect(pending.state).toBe('SIGNING_KEY_STATE_NEXT');
    const emergency = await admin.rotateSigningKey({ immediate: true, reason: 'key material leaked (INC-7)' });
    expect(emergency).toMatchObject({ state: 'SIGNING_KEY_STATE_ACTIVE', immediate: true, retiredKid: current, discardedKid: pending.kid });
    const now = fromTimestamp(emergency.activatesAt)!.getTime();
    expect(fromTimestamp(emergency.retiredKeyPublishedUntil)!.getTime()).toBe(now + RETIRED_MS);
    expect(await signingKid()).toBe(emergency.kid);
    expect(await jwksKids()).toEqual([emergency.kid, current]);
    expect(await lastAdminEvent()).toMatchObject({
      type: 'admin.key_rotated',
      actorSpiffeId: ADMIN,
      details: {
        kid: emergency.kid,
        state: 'ACTIVE',
        immediate: true,
        pre_publication_skipped: true,
        discarded_kid: pending.kid,
        retired_kid: current,
        reason: 'key material leaked (INC-7)',
      },
    });
    expect(phases(await admin.listSigningKeys()).map((k) => [k.kid, k.state])).toEqual([
      [emergency.kid, 'SIGNING_KEY_STATE_ACTIVE'],
      [current, 'SIGNING_KEY_STATE_RETIRED'],
    ]);
  });

  it('refuses non-admins (audited) and a reason with control characters, changing nothing', async () => {
    const before = phases(await admin.listSigningKeys({ all: true }));
    const intruder = await t.adminClient(WORKER);
    await expect(intruder.listSigningKeys()).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: 'ListSigningKeys is for admins only' });
    await expect(intruder.rotateSigningKey({ immediate: true })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: 'RotateSigningKey is for admins only',
    });
    const { trail } = await verifyTaskTrail(t.broker.store.db, `actor:${WORKER}`);
    expect(trail.filter((e) => e.type === 'access.denied').map((e) => [e.details.operation, e.details.immediate])).toEqual(
      expect.arrayContaining([
        ['ListSigningKeys', undefined],
        ['RotateSigningKey', true],
      ]),
    );
    await expect(admin.rotateSigningKey({ reason: 'bad\u001b[31m' })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: 'reason: control characters are not allowed',
    });
    expect(phases(await admin.listSigningKeys({ all: true }))).toEqual(before);
  });
});
