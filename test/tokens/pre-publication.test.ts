/**
 * No gap for offline verifiers: the verifier SDK (its key set from the broker's key ring, on a
 * real database, on one clock the test moves) that cached the keys before a rotation verifies
 * the first tokens of the next key without fetching the keys again: it has re-fetched them during
 * the pre-publication period (its keys grew older than keyMaxAgeMs), when the next key was
 * already published. Without that refresh, and after an immediate rotation, the first token of
 * the new key costs a fetch (and verifySync refuses it).
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { GetSigningKeysResponse__Output } from '../../src/gen/taskbroker/v1/GetSigningKeysResponse.js';
import { silentLogger } from '../../src/observability/logger.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { DEFAULT_PRE_PUBLICATION_MS, VERIFIER_KEY_MAX_AGE_MS } from '../../src/tokens/key-publication.js';
import { SigningKeyRing } from '../../src/tokens/keyring.js';
import { createTaskTokenVerifier, type TaskTokenVerifier } from '../../src/verifier/index.js';
import { migratedStore, STORES } from '../helpers/db.js';
import { TOKEN_ISSUER } from '../helpers/task-token.js';
import { FakeBroker, ManualClock, token } from '../verifier/fakes.js';

const THUMBPRINT = '47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU';
const presented = { presenterCertificate: { thumbprint: THUMBPRINT } };

/** The verifier's broker: GetSigningKeys answers with the key ring's JWKS (what the broker sends), counting the fetches. */
class KeyRingBroker extends FakeBroker {
  /** The fetches under way or done, to wait for one started in the background. */
  readonly fetching: Array<Promise<GetSigningKeysResponse__Output>> = [];
  constructor(readonly ring: SigningKeyRing) {
    super([]);
  }
  override getSigningKeys(): Promise<GetSigningKeysResponse__Output> {
    this.keyFetches += 1;
    const answer = this.ring.jwks().then((jwks) => ({ jwksJson: JSON.stringify(jwks), issuer: TOKEN_ISSUER, alg: 'ES256' }));
    this.fetching.push(answer);
    return answer;
  }
  /** Resolves once every fetch started so far has been answered and the verifier has taken the keys (one turn of the event loop later). */
  async settled(): Promise<void> {
    await Promise.all(this.fetching);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

describe.each(STORES)('signing-key pre-publication and the verifier SDK on %s', (kind) => {
  let env: Awaited<ReturnType<typeof migratedStore>>;
  let clock: ManualClock;
  let ring: SigningKeyRing;
  const open: TaskTokenVerifier[] = [];
  const kek = KeyEncryptionKey.fromBase64(generateKekBase64());

  beforeAll(async () => {
    env = await migratedStore(kind);
  });
  afterAll(async () => {
    await env?.cleanup();
  });
  beforeEach(async () => {
    await env.store.db.deleteFrom('signing_keys').execute();
    clock = new ManualClock();
    ring = new SigningKeyRing({
      db: env.store.db,
      kek,
      alg: 'ES256',
      clock: () => new Date(clock.now()),
      maxTokenTtlSeconds: 600,
      logger: silentLogger(),
    });
    await ring.init();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((v) => v.close()));
  });

  async function verifierOn(broker: KeyRingBroker, keyMaxAgeMs?: number): Promise<TaskTokenVerifier> {
    const verifier = createTaskTokenVerifier({
      broker,
      clock,
      revocations: 'none',
      reporting: false,
      audience: 'spiffe://a.test/target',
      ...(keyMaxAgeMs === undefined ? {} : { keyMaxAgeMs }),
    });
    open.push(verifier);
    await verifier.ready();
    return verifier;
  }

  const signed = async () => token(await ring.activeKey(), clock.now(), THUMBPRINT);
  const kidOf = (jwt: string) => (JSON.parse(Buffer.from(jwt.split('.')[0] ?? '', 'base64url').toString()) as { kid: string }).kid;

  it('a verifier that cached the keys before the rotation verifies the first token of the next key without fetching the keys again', async () => {
    // The default pre-publication period is longer than the verifier's default key max age: there is room for its refresh.
    expect(DEFAULT_PRE_PUBLICATION_MS).toBeGreaterThan(VERIFIER_KEY_MAX_AGE_MS);
    const broker = new KeyRingBroker(ring);
    const verifier = await verifierOn(broker);
    expect(broker.keyFetches).toBe(1);
    const old = (await ring.activeKey()).kid;

    const rotation = await ring.rotate();
    expect(rotation.state).toBe('NEXT');
    // Until activates_at the old key signs, and the verifier needs nothing new.
    const before = await signed();
    expect(kidOf(before)).toBe(old);
    expect(await verifier.verify(before, presented)).toMatchObject({ valid: true, reason: 'VALID' });
    expect(broker.keyFetches).toBe(1);

    // Its keys grow older than keyMaxAgeMs: the next verification fetches them in the background (and does not wait).
    clock.advance(VERIFIER_KEY_MAX_AGE_MS);
    expect(verifier.verifySync(await signed(), presented)).toMatchObject({ valid: true });
    expect(broker.keyFetches).toBe(2);
    await broker.settled();

    // The old key signs until activates_at, the next key from then on; the verifier already has it.
    clock.advance(rotation.activatesAt.getTime() - 1000 - clock.now());
    const lastOld = await signed();
    expect(kidOf(lastOld)).toBe(old);
    clock.advance(1000);
    const after = await signed();
    expect(kidOf(after)).toBe(rotation.kid);
    expect(verifier.verifySync(after, presented)).toMatchObject({ valid: true, reason: 'VALID' });
    expect(await verifier.verify(after, presented)).toMatchObject({ valid: true, reason: 'VALID' });
    // And tokens of the retired key, still published, as before.
    expect(await verifier.verify(lastOld, presented)).toMatchObject({ valid: true, reason: 'VALID' });
    expect(broker.keyFetches).toBe(2);
    expect(verifier.stats().keyRefreshes).toBe(2);
  });

  it('without a refresh during pre-publication (keyMaxAgeMs longer than it), the first token of the next key costs a fetch', async () => {
    const broker = new KeyRingBroker(ring);
    const verifier = await verifierOn(broker, DEFAULT_PRE_PUBLICATION_MS * 10);
    const rotation = await ring.rotate();
    clock.advance(rotation.activatesAt.getTime() - clock.now());
    const after = await signed();
    expect(kidOf(after)).toBe(rotation.kid);
    expect(verifier.verifySync(after, presented)).toMatchObject({ valid: false, reason: 'BAD_SIGNATURE' });
    expect(await verifier.verify(after, presented)).toMatchObject({ valid: true });
    expect(broker.keyFetches).toBe(2);
  });

  it('an immediate (emergency) rotation skips pre-publication: a verifier with cached keys meets an unknown kid and fetches', async () => {
    const broker = new KeyRingBroker(ring);
    const verifier = await verifierOn(broker);
    const emergency = await ring.rotate({ immediate: true });
    expect(emergency.state).toBe('ACTIVE');
    // (An unknown kid within keyRefreshMinIntervalMs of the last fetch is refused without one.)
    clock.advance(10_000);
    const after = await signed();
    expect(kidOf(after)).toBe(emergency.kid);
    expect(verifier.verifySync(after, presented)).toMatchObject({ valid: false, reason: 'BAD_SIGNATURE' });
    expect(await verifier.verify(after, presented)).toMatchObject({ valid: true });
    expect(broker.keyFetches).toBe(2);
  });
});

describe('the verifier SDK key max age', () => {
  it('must be a positive number of milliseconds', () => {
    for (const keyMaxAgeMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => createTaskTokenVerifier({ broker: new FakeBroker(), revocations: 'none', reporting: false, keyMaxAgeMs })).toThrow(
        'createTaskTokenVerifier: keyMaxAgeMs must be a positive number of milliseconds',
      );
    }
  });

  it('a background refresh is shared while under way; the next waits for another key max age, and after a failure for keyRefreshMinIntervalMs', async () => {
    const clock = new ManualClock();
    const broker = new FakeBroker();
    const verifier = createTaskTokenVerifier({ broker, clock, revocations: 'none', reporting: false, audience: 'spiffe://a.test/target', keyMaxAgeMs: 60_000 });
    try {
      await verifier.ready();
      const jwt = await token(broker.keys[0]!, clock.now(), THUMBPRINT);
      let release!: () => void;
      broker.keyGate = new Promise<void>((resolve) => (release = resolve));
      clock.advance(60_000);
      expect(verifier.verifySync(jwt, presented).valid).toBe(true);
      expect(broker.keyFetches).toBe(2);
      // While that fetch is under way, no other starts.
      expect(verifier.verifySync(jwt, presented).valid).toBe(true);
      expect(broker.keyFetches).toBe(2);
      release();
      broker.keyGate = undefined;
      await new Promise<void>((resolve) => setImmediate(resolve));
      // Fresh again: the next fetch waits for another key max age.
      clock.advance(59_999);
      verifier.verifySync(jwt, presented);
      expect(broker.keyFetches).toBe(2);
      clock.advance(1);
      verifier.verifySync(jwt, presented);
      expect(broker.keyFetches).toBe(3);
      await new Promise<void>((resolve) => setImmediate(resolve));

      // A failed refresh keeps the keys it had (still verifying) and is tried again at the refresh rate (default 10 s).
      const down = Promise.reject(new Error('broker down'));
      down.catch(() => undefined);
      broker.keyGate = down;
      clock.advance(60_000);
      expect(verifier.verifySync(jwt, presented).valid).toBe(true);
      expect(broker.keyFetches).toBe(4);
      await new Promise<void>((resolve) => setImmediate(resolve));
      clock.advance(9_999);
      verifier.verifySync(jwt, presented);
      expect(broker.keyFetches).toBe(4);
      clock.advance(1);
      verifier.verifySync(jwt, presented);
      expect(broker.keyFetches).toBe(5);
      broker.keyGate = undefined;
    } finally {
      await verifier.close();
    }
  });
});
