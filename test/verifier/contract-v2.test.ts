/**
 * Token contract v2 in the verifier SDK, against the fake broker: a use-limited token (max_uses)
 * is never accepted offline, whatever the revocation mode (VerifyToken decides, and a broker that
 * cannot be asked means a refusal); verifySync refuses it and says to use verify(); the v2 claims
 * are spelled out on the result; a newer contract (ver > 2) is MALFORMED.
 */
import { createHash, randomBytes, sign } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { SigningKey } from '../../src/tokens/keyring.js';
import type { TaskTokenClaims } from '../../src/tokens/task-token.js';
import { createTaskTokenVerifier, type TaskTokenVerifier, type VerifierOptions } from '../../src/verifier/index.js';
import { taskTokenClaims } from '../helpers/task-token.js';
import { AUDIENCE, FakeBroker, ManualClock, revocation, token } from './fakes.js';

const presenter = randomBytes(300);
const thumbprint = createHash('sha256').update(presenter).digest('base64url');
const opts = { presenterCertificate: presenter };
const DELEGATOR = 'spiffe://a.test/ns/demo/sa/orchestrator';
const ROOT_OWNER = 'spiffe://a.test/ns/demo/sa/frontend';
const PRINCIPAL = { iss: 'https://idp.example', sub: 'alice', sid: 'session-1' };

const open: TaskTokenVerifier[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((v) => v.close()));
});

async function setUp(options: Partial<VerifierOptions> = {}) {
  const clock = new ManualClock();
  const broker = new FakeBroker();
  const verifier = createTaskTokenVerifier({ broker, clock, revocations: 'none', reporting: false, ...options });
  open.push(verifier);
  if (options.revocations === 'stream') broker.streams[0]!.send({ snapshot: true, cursor: 'c1' });
  await verifier.ready();
  const mint = (overrides: Partial<TaskTokenClaims> = {}) => token(broker.keys[0]!, clock.now(), thumbprint, { ver: 2, ...overrides });
  return { clock, broker, verifier, mint };
}

/** A compact JWS signed with `key` the way the broker signs (ES256, r||s), with claims the broker's signer would refuse. */
function handMade(key: SigningKey, claims: object): string {
  const header = { alg: 'ES256', kid: key.kid, typ: 'task+jwt' };
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  const signature = sign('sha256', Buffer.from(input), { key: key.privateKey as never, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

const usesAnswer = (usesLeft: number) => ({ valid: true, reason: 'VERIFY_TOKEN_REASON_VALID' as const, detail: 'valid', claims: { usesLeft } as never });

describe('use-limited tokens (max_uses)', () => {
  it.each(['none', 'stream', 'online'] as const)(
    "are verified online in revocations '%s' mode, with the uses left and USES_EXHAUSTED from the broker",
    async (mode) => {
      const { broker, verifier, mint } = await setUp({ revocations: mode });
      const jwt = await mint({ max_uses: 2 });
      broker.verifyAnswer = usesAnswer(1);
      expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true, reason: 'VALID', maxUses: 2, usesLeft: 1 });
      broker.verifyAnswer = usesAnswer(0);
      expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true, maxUses: 2, usesLeft: 0 });
      broker.verifyAnswer = { valid: false, reason: 'VERIFY_TOKEN_REASON_USES_EXHAUSTED', detail: 'token used 2 times of 2' };
      const exhausted = await verifier.verify(jwt, opts);
      expect(exhausted).toMatchObject({ valid: false, reason: 'USES_EXHAUSTED', detail: 'token used 2 times of 2', maxUses: 2 });
      expect(exhausted.usesLeft).toBeUndefined();
      expect(broker.verifyCalls).toEqual(Array(3).fill({ token: jwt, presenterCertThumbprint: thumbprint }));
      expect(verifier.stats().verified).toMatchObject({ VALID: 2, USES_EXHAUSTED: 1 });
    },
  );

  it('are refused, never accepted, when the broker cannot be asked', async () => {
    const { broker, verifier, mint } = await setUp({ revocations: 'stream' });
    const jwt = await mint({ max_uses: 5 });
    broker.verifyToken = () => Promise.reject(new Error('UNAVAILABLE: connection refused'));
    const result = await verifier.verify(jwt, opts);
    expect(result).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN', maxUses: 5 });
    expect(result.detail).toMatch(/use-limited token \(max_uses\).*broker could not be asked: UNAVAILABLE: connection refused/);
    // The same verifier accepts an ordinary token offline meanwhile: the refusal is about max_uses alone.
    expect(await verifier.verify(await mint(), opts)).toMatchObject({ valid: true });
  });

  it('are refused by verifySync, which says to use verify(), without asking the broker', async () => {
    const { broker, verifier, mint } = await setUp({ revocations: 'none' });
    const jwt = await mint({ max_uses: 1 });
    const result = verifier.verifySync(jwt, opts);
    expect(result).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN', maxUses: 1, claims: { max_uses: 1 } });
    expect(result.detail).toMatch(/max_uses.*use verify\(\)/);
    expect(broker.verifyCalls).toHaveLength(0);
    expect(verifier.verifySync(await mint(), opts)).toMatchObject({ valid: true });
  });

  it('are refused offline, without a use spent, when the binding, audience or task hash is wrong', async () => {
    const { broker, verifier, mint } = await setUp({ revocations: 'none' });
    const jwt = await mint({ max_uses: 2 });
    expect(await verifier.verify(jwt, { presenterCertificate: randomBytes(300) })).toMatchObject({ reason: 'BINDING_MISMATCH' });
    expect(await verifier.verify(jwt, { ...opts, expectedTaskHash: 'another' })).toMatchObject({ reason: 'TASK_HASH_MISMATCH' });
    expect(await verifier.verify(await mint({ max_uses: 2, aud: 'spiffe://a.test/other' }), opts)).toMatchObject({ reason: 'AUDIENCE_MISMATCH' });
    expect(broker.verifyCalls).toHaveLength(0);
  });

  it('are not reported as offline accesses (the broker records VerifyToken itself)', async () => {
    const { clock, broker, verifier, mint } = await setUp({ revocations: 'stream', reporting: { flushIntervalMs: 1000 } });
    await verifier.verify(await mint({ max_uses: 3 }), opts);
    await verifier.verify(await mint({ jti: 'tok-offline' }), opts);
    const report = broker.nextReport();
    clock.advance(1000);
    const { uses } = await report;
    expect(uses.map((u) => u.tokenId)).toEqual(['tok-offline']);
    expect(broker.verifyCalls).toHaveLength(1);
  });

  it('are refused as MALFORMED with a max_uses out of bounds', async () => {
    const { clock, broker, verifier } = await setUp();
    const claims = taskTokenClaims(new Date(clock.now()), { aud: AUDIENCE, cnf: { 'x5t#S256': thumbprint }, ver: 2 });
    for (const maxUses of [0, 1001, 2.5, '2']) {
      const result = await verifier.verify(handMade(broker.keys[0]!, { ...claims, max_uses: maxUses }), opts);
      expect(result).toMatchObject({ valid: false, reason: 'MALFORMED', detail: 'claim max_uses must be a whole number from 1 to 1000' });
    }
    expect(broker.verifyCalls).toHaveLength(0);
  });
});

describe('token contract v2 claims', () => {
  it('spells out the act chain (most recent first), the parent and the principal', async () => {
    const { verifier, mint } = await setUp();
    const jwt = await mint({ act: { sub: DELEGATOR, act: { sub: ROOT_OWNER } }, parent_task_id: 'tsk_parent', principal: PRINCIPAL });
    const result = await verifier.verify(jwt, opts);
    expect(result).toMatchObject({ valid: true, actors: [DELEGATOR, ROOT_OWNER], parentTaskId: 'tsk_parent', principal: PRINCIPAL });
    expect(result.maxUses).toBeUndefined();
    expect(verifier.verifySync(jwt, opts)).toMatchObject({ valid: true, actors: [DELEGATOR, ROOT_OWNER] });
    // On a refusal of an authentic token, too.
    expect(await verifier.verify(jwt, { presenterCertificate: randomBytes(300) })).toMatchObject({ reason: 'BINDING_MISMATCH', parentTaskId: 'tsk_parent' });
  });

  it('a version 1 token (no ver) has no actors and none of the v2 fields', async () => {
    const { clock, broker, verifier } = await setUp();
    const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
    const result = await verifier.verify(jwt, opts);
    expect(result).toMatchObject({ valid: true, actors: [] });
    expect(result.claims?.ver).toBeUndefined();
    for (const field of ['parentTaskId', 'principal', 'maxUses', 'usesLeft'] as const) expect(result[field]).toBeUndefined();
    // Not a token at all: no claims, no actors.
    expect(await verifier.verify('a.b.c', opts)).not.toHaveProperty('actors');
  });

  it.each(['none', 'stream', 'online'] as const)(
    "refuses a token of a newer contract (ver 3) as MALFORMED in '%s' mode, without asking the broker",
    async (mode) => {
      const { clock, broker, verifier } = await setUp({ revocations: mode });
      const claims = taskTokenClaims(new Date(clock.now()), { aud: AUDIENCE, cnf: { 'x5t#S256': thumbprint } });
      const v3 = handMade(broker.keys[0]!, { ...claims, ver: 3 });
      const result = await verifier.verify(v3, opts);
      expect(result).toMatchObject({ valid: false, reason: 'MALFORMED', claims: { task_id: 'task-1' } });
      expect(result.detail).toMatch(/token contract version 3 is newer than this verifier understands \(2\)/);
      expect(verifier.verifySync(v3, opts)).toMatchObject({ valid: false, reason: 'MALFORMED' });
      expect(broker.verifyCalls).toHaveLength(0);
      // The same claims at ver 2, hand-made the same way, are accepted: the refusal is about ver alone.
      expect(await verifier.verify(handMade(broker.keys[0]!, { ...claims, ver: 2 }), opts)).toMatchObject({ valid: true });
    },
  );

  it('a revoked delegated task is refused offline, with its chain on the refusal', async () => {
    const { clock, broker, verifier, mint } = await setUp({ revocations: 'stream' });
    broker.streams[0]!.send({ cursor: 'c2', revocations: [revocation('task-1', clock.now() + 300_000)] });
    const jwt = await mint({ act: { sub: DELEGATOR }, parent_task_id: 'tsk_parent' });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOKED', actors: [DELEGATOR], parentTaskId: 'tsk_parent' });
  });
});
