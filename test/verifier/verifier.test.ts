/**
 * The verifier SDK's refusals and its revocation modes, against a fake broker (real signing keys
 * and the broker's own signer, a real event-emitting revocation stream) and a manual clock.
 */
import { createHash, sign, X509Certificate } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BrokerClient } from '../../src/client/broker-client.js';
import { mintX509Svid, createRootCa, type IssuedCertificate } from '../../src/devca/certificates.js';
import type { SigningKey } from '../../src/tokens/keyring.js';
import { createTaskTokenVerifier, type TaskTokenVerifier, type VerifierBroker, type VerifierOptions } from '../../src/verifier/index.js';
import { taskTokenClaims } from '../helpers/task-token.js';
import { AUDIENCE, FakeBroker, ManualClock, revocation, signingKey, token } from './fakes.js';

// A BrokerClient is what a real resource server passes: it must fit the structural interface.
const brokerClientFits: (client: BrokerClient) => VerifierBroker = (client) => client;
void brokerClientFits;

let presenter: IssuedCertificate;
let stranger: IssuedCertificate;
let thumbprint: string;

beforeAll(async () => {
  const ca = await createRootCa('a.test');
  presenter = await mintX509Svid(ca, 'spiffe://a.test/workload');
  stranger = await mintX509Svid(ca, 'spiffe://a.test/stranger');
  thumbprint = createHash('sha256').update(presenter.der).digest('base64url');
});

const open: TaskTokenVerifier[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((v) => v.close()));
});

function verifierOf(broker: FakeBroker, clock: ManualClock, options: Partial<VerifierOptions> = {}): TaskTokenVerifier {
  const verifier = createTaskTokenVerifier({ broker, clock, revocations: 'none', reporting: false, ...options });
  open.push(verifier);
  return verifier;
}

/** A compact JWS with the given header, signed with `key` the way the broker signs (ES256, r||s). */
function handMade(key: SigningKey, header: Record<string, unknown>, claims: object): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  const signature = sign('sha256', Buffer.from(input), { key: key.privateKey as never, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

describe('offline checks', () => {
  it('accepts a valid token with the presenter certificate in every form', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
    for (const form of [presenter.der, new X509Certificate(presenter.der), presenter.pem, { thumbprint }]) {
      const result = await verifier.verify(jwt, { presenterCertificate: form });
      expect(result).toMatchObject({ valid: true, reason: 'VALID', claims: { aud: AUDIENCE, task_id: 'task-1' } });
    }
    expect(verifier.verifySync(jwt, { presenterCertificate: presenter.der }).reason).toBe('VALID');
  });

  it('refuses a token presented by another certificate, or without one', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
    expect(await verifier.verify(jwt, { presenterCertificate: stranger.der })).toMatchObject({ valid: false, reason: 'BINDING_MISMATCH' });
    expect(await verifier.verify(jwt, { presenterCertificate: { thumbprint: 'x'.repeat(43) } })).toMatchObject({ valid: false, reason: 'BINDING_MISMATCH' });
    expect(await verifier.verify(jwt, {})).toMatchObject({ valid: false, reason: 'PRESENTER_REQUIRED' });
    expect(await verifier.verify(jwt, { presenterCertificate: Buffer.alloc(0) })).toMatchObject({ valid: false, reason: 'PRESENTER_REQUIRED' });
  });

  it('refuses an unknown kid after one refresh, and accepts a rotated-in key after it', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    expect(broker.keyFetches).toBe(1);
    const outsider = signingKey();
    const jwt = await token(outsider, clock.now(), thumbprint);
    clock.advance(10_000);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'BAD_SIGNATURE' });
    expect(broker.keyFetches).toBe(2);

    const rotated = signingKey();
    broker.keys = [rotated, ...broker.keys];
    clock.advance(10_000);
    const fresh = await token(rotated, clock.now(), thumbprint);
    expect(await verifier.verify(fresh, { presenterCertificate: presenter.der })).toMatchObject({ valid: true });
    expect(broker.keyFetches).toBe(3);
  });

  it('refuses an alg other than the key’s, none and HMAC', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    const key = broker.keys[0]!;
    const claims = taskTokenClaims(new Date(clock.now()), { aud: AUDIENCE, cnf: { 'x5t#S256': thumbprint } });
    const asEdDSA = handMade(key, { alg: 'EdDSA', kid: key.kid, typ: 'task+jwt' }, claims);
    expect(await verifier.verify(asEdDSA, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'BAD_SIGNATURE' });
    for (const alg of ['HS256', 'none', 'RS256']) {
      const jwt = handMade(key, { alg, kid: key.kid, typ: 'task+jwt' }, claims);
      expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'MALFORMED' });
    }
    // The same header as the broker's, hand-made: accepted, so the refusals above are about alg alone.
    const same = handMade(key, { alg: 'ES256', kid: key.kid, typ: 'task+jwt' }, claims);
    expect(await verifier.verify(same, { presenterCertificate: presenter.der })).toMatchObject({ valid: true });
  });

  it('refuses a typ other than task+jwt', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    const key = broker.keys[0]!;
    const claims = taskTokenClaims(new Date(clock.now()), { aud: AUDIENCE, cnf: { 'x5t#S256': thumbprint } });
    for (const typ of ['JWT', 'at+jwt', undefined]) {
      const jwt = handMade(key, { alg: 'ES256', kid: key.kid, typ }, claims);
      expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'MALFORMED' });
    }
  });

  it('refuses another audience, another issuer and a wrong task hash', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    const key = broker.keys[0]!;
    const other = await token(key, clock.now(), thumbprint, { aud: 'spiffe://a.test/someone-else' });
    expect(await verifier.verify(other, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'AUDIENCE_MISMATCH' });
    const foreign = await token(key, clock.now(), thumbprint, { iss: 'spiffe://evil.test/broker' });
    expect(await verifier.verify(foreign, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'MALFORMED' });
    const jwt = await token(key, clock.now(), thumbprint);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der, expectedTaskHash: 'another' })).toMatchObject({ reason: 'TASK_HASH_MISMATCH' });
  });

  it('refuses an expired token, with the clock tolerance', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock, { clockToleranceSeconds: 5 });
    await verifier.ready();
    const jwt = await token(broker.keys[0]!, clock.now() - 300_000, thumbprint);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: true });
    clock.advance(4_000);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: true });
    clock.advance(2_000);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'EXPIRED' });
    expect(() => verifierOf(broker, clock, { clockToleranceSeconds: 61 })).toThrow(RangeError);
  });
});

describe('key refreshes', () => {
  it('are rate-limited: an unknown kid within the interval is refused without a fetch', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock, { keyRefreshMinIntervalMs: 10_000 });
    await verifier.ready();
    const jwts = await Promise.all([1, 2, 3].map(() => token(signingKey(), clock.now(), thumbprint)));
    for (const jwt of jwts) expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ reason: 'BAD_SIGNATURE' });
    expect(broker.keyFetches).toBe(1);
    clock.advance(10_000);
    expect(await verifier.verify(jwts[0]!, { presenterCertificate: presenter.der })).toMatchObject({ reason: 'BAD_SIGNATURE' });
    expect(broker.keyFetches).toBe(2);
    expect(verifier.stats().keyRefreshes).toBe(2);
  });

  it('are coalesced: concurrent unknown kids share one fetch', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock);
    await verifier.ready();
    clock.advance(10_000);
    let open!: () => void;
    broker.keyGate = new Promise((resolve) => (open = resolve));
    const rotated = signingKey();
    broker.keys = [rotated];
    const jwts = await Promise.all([1, 2, 3, 4].map(() => token(rotated, clock.now(), thumbprint)));
    const pending = jwts.map((jwt) => verifier.verify(jwt, { presenterCertificate: presenter.der }));
    open();
    for (const result of await Promise.all(pending)) expect(result.valid).toBe(true);
    expect(broker.keyFetches).toBe(2);
  });
});

describe('revocations', () => {
  async function streaming(
    options: Partial<VerifierOptions> = {},
  ): Promise<{ clock: ManualClock; broker: FakeBroker; verifier: TaskTokenVerifier; jwt: string }> {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock, { revocations: 'stream', maxStalenessMs: 30_000, ...options });
    const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
    return { clock, broker, verifier, jwt };
  }

  it('refuses a token whose task is revoked; a snapshot replaces the set; entries go after tokens_expire_by', async () => {
    const { clock, broker, verifier, jwt } = await streaming();
    const stream = broker.streams[0]!;
    stream.send({ snapshot: true, cursor: 'c1', heartbeatInterval: { seconds: '5', nanos: 0 }, revocations: [revocation('task-other', clock.now() + 60_000)] });
    await verifier.ready();
    const opts = { presenterCertificate: presenter.der };
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
    stream.send({ cursor: 'c2', revocations: [revocation('task-1', clock.now() + 300_000)] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOKED', claims: { task_id: 'task-1' } });
    stream.send({ snapshot: true, cursor: 'c3', revocations: [] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
    stream.send({ cursor: 'c4', revocations: [revocation('task-1', clock.now() + 1_000)] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ reason: 'REVOKED' });
    clock.advance(7_000); // past tokens_expire_by and the 5 s tolerance
    stream.send({ cursor: 'c5' });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
  });

  it('a snapshot in several messages counts only once its start is complete; a throwing onRevoked listener breaks nothing', async () => {
    const { clock, broker, verifier, jwt } = await streaming();
    const opts = { presenterCertificate: presenter.der };
    verifier.onRevoked(() => {
      throw new Error('listener bug');
    });
    const stream = broker.streams[0]!;
    stream.send({ snapshot: true, cursor: 'c1', startComplete: false, revocations: [revocation('task-other', clock.now() + 60_000)] });
    // Page 1 of the snapshot: the set is not current yet (task-1 may be on a later page).
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN' });
    stream.send({ cursor: 'c2', startComplete: true, revocations: [revocation('task-1', clock.now() + 60_000)] });
    await verifier.ready();
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOKED' });
    // A broken stream resumes from the whole snapshot's cursor, not from one inside it.
    stream.emit('error', new Error('UNAVAILABLE'));
    clock.advance(clock.nextDelay()!);
    expect(broker.streams[1]!.cursor).toBe('c2');
    // A new snapshot replaces the set only once it is whole.
    broker.streams[1]!.send({ snapshot: true, cursor: 'c3', startComplete: false, revocations: [] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ reason: 'REVOKED' });
    broker.streams[1]!.send({ cursor: 'c4', startComplete: true, revocations: [] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
  });

  it('against a broker older than start_complete, its first heartbeat ends the start', async () => {
    const { clock, broker, verifier, jwt } = await streaming();
    const opts = { presenterCertificate: presenter.der };
    const stream = broker.streams[0]!;
    stream.send({ snapshot: true, cursor: 'c1', startComplete: false, revocations: [revocation('task-1', clock.now() + 60_000)] });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ reason: 'REVOCATION_STATUS_UNKNOWN' });
    stream.send({ cursor: 'c1', startComplete: false, revocations: [] }); // the old broker's heartbeat
    await verifier.ready();
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOKED' });
  });

  it('reconnects with the last cursor after an error or an end, backing off', async () => {
    const { clock, broker, verifier } = await streaming({ reconnectInitialMs: 100, reconnectMaxMs: 1_000 });
    broker.streams[0]!.send({ snapshot: true, cursor: 'c1' });
    await verifier.ready();
    broker.streams[0]!.emit('error', new Error('UNAVAILABLE'));
    expect(broker.streams).toHaveLength(1);
    clock.advance(100);
    expect(broker.streams).toHaveLength(2);
    expect(broker.streams[1]!.cursor).toBe('c1');
    broker.streams[1]!.send({ cursor: 'c2' });
    broker.streams[1]!.emit('end');
    broker.streams[1]!.emit('error', new Error('late error of the same stream'));
    clock.advance(100);
    expect(broker.streams).toHaveLength(3);
    expect(broker.streams[2]!.cursor).toBe('c2');
    // Without a message, failures back off further, up to the cap.
    broker.streams[2]!.emit('error', new Error('UNAVAILABLE'));
    expect(clock.nextDelay()).toBeGreaterThanOrEqual(100);
    clock.advance(clock.nextDelay()!);
    broker.streams[3]!.emit('error', new Error('UNAVAILABLE'));
    expect(clock.nextDelay()).toBeGreaterThanOrEqual(200);
    expect(verifier.stats().streamReconnects).toBe(4);
    await verifier.close();
    expect(clock.pending).toBe(0);
    clock.advance(60_000);
    expect(broker.streams).toHaveLength(4);
  });

  it('fails closed when the stream is stale', async () => {
    const { clock, broker, verifier, jwt } = await streaming();
    const opts = { presenterCertificate: presenter.der };
    // No message yet: nothing can be said about revocation.
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN' });
    broker.streams[0]!.send({ snapshot: true, cursor: 'c1' });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
    clock.advance(30_001);
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN' });
    expect(verifier.stats()).toMatchObject({ stale: 2, revocationsStale: true });
    // The silent stream was dropped and opened again (after three heartbeats); a heartbeat on it makes the set fresh again.
    expect(broker.streams.length).toBeGreaterThan(1);
    expect(broker.streams[0]!.cancelled).toBe(true);
    broker.streams.at(-1)!.send({ cursor: 'c1' });
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
    // A definite refusal stays definite when stale.
    clock.advance(30_001);
    expect(await verifier.verify(jwt, { presenterCertificate: stranger.der })).toMatchObject({ reason: 'BINDING_MISMATCH' });
    expect(broker.verifyCalls).toHaveLength(0);
  });

  it('asks VerifyToken when stale and onStale is online', async () => {
    const { clock, broker, verifier, jwt } = await streaming({ onStale: 'online' });
    broker.streams[0]!.send({ snapshot: true, cursor: 'c1' });
    const opts = { presenterCertificate: presenter.der, expectedTaskHash: 'Ll0x9m3sPqLQ8pEhGx3vV7o1sKXc5qYkQvFfJbqJgkA' };
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true });
    expect(broker.verifyCalls).toHaveLength(0);
    clock.advance(30_001);
    broker.verifyAnswer = { valid: false, reason: 'VERIFY_TOKEN_REASON_REVOKED', detail: 'task cancelled' };
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOKED', detail: 'task cancelled' });
    expect(broker.verifyCalls).toEqual([{ token: jwt, presenterCertThumbprint: thumbprint, expectedTaskHash: opts.expectedTaskHash }]);
    broker.verifyAnswer = { valid: true, reason: 'VERIFY_TOKEN_REASON_VALID' };
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: true, reason: 'VALID' });
    // verifySync cannot ask: it fails closed.
    expect(verifier.verifySync(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN' });
    // A broker that cannot be asked: closed.
    broker.verifyToken = () => Promise.reject(new Error('UNAVAILABLE'));
    expect(await verifier.verify(jwt, opts)).toMatchObject({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN' });
  });

  it("confirms every offline-valid token with VerifyToken in 'online' mode, and none of the refused", async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = verifierOf(broker, clock, { revocations: 'online' });
    await verifier.ready();
    const jwt = await token(broker.keys[0]!, clock.now(), thumbprint);
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: true });
    expect(await verifier.verify(jwt, { presenterCertificate: stranger.der })).toMatchObject({ reason: 'BINDING_MISMATCH' });
    broker.verifyAnswer = { valid: false, reason: 'VERIFY_TOKEN_REASON_TASK_NOT_ACTIVE', detail: 'task completed' };
    expect(await verifier.verify(jwt, { presenterCertificate: presenter.der })).toMatchObject({ valid: false, reason: 'TASK_NOT_ACTIVE' });
    expect(broker.verifyCalls).toHaveLength(2);
  });
});
