/**
 * The signing-key ring on PostgreSQL and PGlite, on a clock the test moves: keys at rest, replicas
 * sharing keys, and the phases of a rotation: NEXT (published, not signing) for the pre-publication
 * period, then ACTIVE (promoted by whichever replica signs or reads first, exactly once), the old
 * key RETIRED and published until its tokens expired; the emergency (immediate) path.
 */
import { KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/errors.js';
import type { Db } from '../../src/store/database.js';
import { silentLogger, type Logger } from '../../src/observability/logger.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { DEFAULT_PRE_PUBLICATION_MS } from '../../src/tokens/key-publication.js';
import { SigningKeyRing, type TokenAlg } from '../../src/tokens/keyring.js';
import { checkTaskToken, signTaskToken } from '../../src/tokens/task-token.js';
import { migratedStore, STORES } from '../helpers/db.js';
import { capturedLogger } from '../helpers/logs.js';
import { taskTokenClaims, TOKEN_ISSUER } from '../helpers/task-token.js';

const MAX_TTL_SECONDS = 600;
const REFRESH_MS = 30_000;
/** The default: 60 s JWKS max-age + 30 s refresh + 5 min verifier key max age. */
const PRE_MS = DEFAULT_PRE_PUBLICATION_MS;
/** How long a retired key stays published after its retirement. */
const RETIRED_MS = MAX_TTL_SECONDS * 1000 + REFRESH_MS;

/** A clock the test moves by hand. */
function manualClock(start = new Date('2030-01-01T00:00:00Z')) {
  let now = start.getTime();
  return {
    clock: () => new Date(now),
    advance: (ms: number) => {
      now += ms;
    },
    set: (date: Date) => {
      now = date.getTime();
    },
  };
}

function pkcs8(key: KeyObject | CryptoKey): Buffer {
  const object = key instanceof KeyObject ? key : KeyObject.from(key);
  return object.export({ format: 'der', type: 'pkcs8' });
}

describe.each(STORES)('SigningKeyRing on %s', (kind) => {
  let env: Awaited<ReturnType<typeof migratedStore>>;
  /** A second connection pool to the same database (postgres), standing in for another replica. */
  let replicaDb: Db;
  let closeReplica: () => Promise<void>;
  const kek = KeyEncryptionKey.fromBase64(generateKekBase64());

  const ring = (options: { db?: Db; alg?: TokenAlg; clock?: () => Date; logger?: Logger; kek?: KeyEncryptionKey; prePublicationMs?: number } = {}) =>
    new SigningKeyRing({
      db: options.db ?? env.store.db,
      kek: options.kek ?? kek,
      alg: options.alg ?? 'ES256',
      clock: options.clock,
      maxTokenTtlSeconds: MAX_TTL_SECONDS,
      refreshIntervalMs: REFRESH_MS,
      prePublicationMs: options.prePublicationMs,
      logger: options.logger ?? silentLogger(),
    });
  const resetKeys = () => env.store.db.deleteFrom('signing_keys').execute();
  /** Oldest first: by creation, then activation (a key and the next one rotated in at the same instant). */
  const keyRows = () => env.store.db.selectFrom('signing_keys').selectAll().orderBy('created_at').orderBy('activates_at').execute();
  /** From no keys: replica `a` creates the first key, `b` runs on another connection; both on a clock the test moves. */
  const twoReplicas = async () => {
    await resetKeys();
    const time = manualClock();
    const a = ring({ clock: time.clock });
    const b = ring({ db: replicaDb, clock: time.clock });
    await a.init();
    return { time, a, b };
  };

  beforeAll(async () => {
    env = await migratedStore(kind);
    if (kind === 'postgres') {
      const replica = await env.database.open();
      replicaDb = replica.db;
      closeReplica = () => replica.close();
    } else {
      // In-memory PGlite can be opened once; its "replicas" share the one connection.
      replicaDb = env.store.db;
      closeReplica = () => Promise.resolve();
    }
  });
  afterAll(async () => {
    await closeReplica?.();
    await env?.cleanup();
  });

  it('activeKey() before any key exists fails clearly', async () => {
    await resetKeys();
    await expect(ring().activeKey()).rejects.toThrow('no ACTIVE signing key in the database; SigningKeyRing.init() must run first');
  });

  it('init() from many replicas at once leaves exactly one ACTIVE key that all of them use', async () => {
    await resetKeys();
    const rings = Array.from({ length: 6 }, (_, i) => ring({ db: i % 2 === 0 ? env.store.db : replicaDb }));
    await Promise.all(rings.map((r) => r.init()));
    // A later start finds the key and creates nothing.
    await ring().init();
    const rows = await keyRows();
    expect(rows).toHaveLength(1);
    expect(rows[0]!.state).toBe('ACTIVE');
    const kids = await Promise.all(rings.map(async (r) => (await r.activeKey()).kid));
    expect(new Set(kids)).toEqual(new Set([rows[0]!.kid]));
  });

  it('stores the private key encrypted under the KEK, bound to its kid, and publishes only public members', async () => {
    await resetKeys();
    const r = ring();
    await r.init();
    const active = await r.activeKey();
    const [row] = await keyRows();
    expect(row).toBeDefined();
    const plaintext = pkcs8(active.privateKey);
    const stored = Buffer.from(row!.private_key_ciphertext);
    expect(row!.kek_id).toBe(kek.id);
    expect(stored.includes(plaintext)).toBe(false);
    expect(stored.includes(plaintext.subarray(plaintext.length - 32))).toBe(false);
    expect(kek.decrypt(stored, row!.kid).equals(plaintext)).toBe(true);
    expect(() => kek.decrypt(stored, 'another-kid')).toThrow(/authentication failed/);

    expect(row!.alg).toBe('ES256');
    expect(row!.public_jwk).toEqual(active.publicJwk);
    expect(active.publicJwk).toMatchObject({ kty: 'EC', crv: 'P-256', kid: row!.kid, alg: 'ES256', use: 'sig' });
    expect(active.publicJwk).not.toHaveProperty('d');
    expect(row!.kid).toBe(await calculateJwkThumbprint(active.publicJwk, 'sha256'));
  });

  it('refuses to load keys with the wrong KEK or a tampered row, naming the KEK', async () => {
    await resetKeys();
    await ring().init();
    const other = KeyEncryptionKey.fromBase64(generateKekBase64());
    await expect(ring({ kek: other }).init()).rejects.toThrow(
      /was encrypted with key-encryption key [0-9a-f]{16}, but the configured key-encryption key is [0-9a-f]{16}/,
    );

    const [row] = await keyRows();
    const tampered = Buffer.from(row!.private_key_ciphertext);
    tampered[20]! ^= 0x01;
    await env.store.db.updateTable('signing_keys').set({ private_key_ciphertext: tampered }).where('kid', '=', row!.kid).execute();
    await expect(ring().activeKey()).rejects.toThrow(`cannot decrypt with key-encryption key ${kek.id}: authentication failed`);
  });

  it('never logs private key material', async () => {
    await resetKeys();
    const { logger, lines } = capturedLogger('debug');
    const r = ring({ logger });
    await r.init();
    const first = await r.activeKey();
    await r.rotate({ immediate: true });
    const second = await r.activeKey();
    const text = JSON.stringify(lines());
    expect(lines().length).toBeGreaterThan(0);
    for (const key of [first, second]) {
      const jwk = (key.privateKey instanceof KeyObject ? key.privateKey : KeyObject.from(key.privateKey)).export({ format: 'jwk' });
      expect(jwk.d).toBeTruthy();
      expect(text).not.toContain(jwk.d);
      expect(text).not.toContain(pkcs8(key.privateKey).toString('base64').slice(0, 40));
    }
    expect(text).toContain(second.kid);
  });

  it('replicas share keys: a token signed by ring A verifies through ring B', async () => {
    await resetKeys();
    const a = ring();
    const b = ring({ db: replicaDb });
    await a.init();
    const now = new Date();
    const token = await signTaskToken(await a.activeKey(), taskTokenClaims(now));
    const result = await checkTaskToken(token, b, { issuer: TOKEN_ISSUER, now });
    expect(result).toMatchObject({ ok: true, kid: (await a.activeKey()).kid, claims: { task_id: 'task-1' } });
  });

  it('a token signed by a ring on another database is bad-signature', async () => {
    await resetKeys();
    const local = ring();
    await local.init();
    const foreign = await migratedStore(kind);
    try {
      const stranger = ring({ db: foreign.store.db, kek: KeyEncryptionKey.fromBase64(generateKekBase64()) });
      await stranger.init();
      const now = new Date();
      const token = await signTaskToken(await stranger.activeKey(), taskTokenClaims(now));
      expect(await checkTaskToken(token, stranger, { issuer: TOKEN_ISSUER, now })).toMatchObject({ ok: true });
      expect(await checkTaskToken(token, local, { issuer: TOKEN_ISSUER, now })).toMatchObject({
        ok: false,
        reason: 'bad-signature',
        detail: /unknown signing key/,
      });
    } finally {
      await foreign.cleanup();
    }
  });

  it('EdDSA keys work as well as ES256', async () => {
    await resetKeys();
    const a = ring({ alg: 'EdDSA' });
    await a.init();
    const active = await a.activeKey();
    expect(active.alg).toBe('EdDSA');
    expect(active.publicJwk).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: active.kid });
    const now = new Date();
    const token = await signTaskToken(active, taskTokenClaims(now));
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'EdDSA', kid: active.kid, typ: 'task+jwt' });
    expect(await checkTaskToken(token, ring({ db: replicaDb, alg: 'ES256' }), { issuer: TOKEN_ISSUER, now })).toMatchObject({ ok: true, kid: active.kid });
    expect(await a.jwks()).toEqual({ keys: [active.publicJwk] });
  });

  it('the first key of an empty database is ACTIVE at once, and so is a rotation when no key is active', async () => {
    await resetKeys();
    const time = manualClock();
    const a = ring({ clock: time.clock });
    await a.init();
    const [first] = await keyRows();
    expect(first).toMatchObject({ state: 'ACTIVE', retired_at: null, publish_until: null });
    expect(first!.activates_at.getTime()).toBe(time.clock().getTime());
    expect(first!.created_at.getTime()).toBe(time.clock().getTime());

    await resetKeys();
    const rotation = await a.rotate();
    expect(rotation).toMatchObject({ state: 'ACTIVE', immediate: false, retiredKid: undefined, retiredKeyPublishedUntil: undefined });
    expect(rotation.activatesAt.getTime()).toBe(time.clock().getTime());
    expect((await a.activeKey()).kid).toBe(rotation.kid);
  });

  it('rotate(): the next key is published at once and signs only from activates_at; the old key signs until then, then stays published until its tokens expired', async () => {
    const { time, a, b } = await twoReplicas();
    const old = await a.activeKey();
    expect((await b.activeKey()).kid).toBe(old.kid);
    const rotatedAt = time.clock();
    const activatesAt = new Date(rotatedAt.getTime() + PRE_MS);

    const rotation = await a.rotate();
    expect(rotation).toMatchObject({ state: 'NEXT', alg: 'ES256', immediate: false, retiredKid: old.kid, discardedKid: undefined });
    expect(rotation.kid).not.toBe(old.kid);
    expect(rotation.activatesAt.getTime()).toBe(activatesAt.getTime());
    expect(rotation.retiredKeyPublishedUntil?.getTime()).toBe(activatesAt.getTime() + RETIRED_MS);
    const next = rotation.kid;
    expect((await keyRows()).map((r) => [r.kid, r.state, r.activates_at.getTime(), r.retired_at, r.publish_until])).toEqual([
      [old.kid, 'ACTIVE', rotatedAt.getTime(), null, null],
      [next, 'NEXT', activatesAt.getTime(), null, null],
    ]);

    // Published by every replica at once (the JWKS is read fresh), verifiable, but not signing.
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([old.kid, next]);
    expect((await b.jwks()).keys.map((k) => k.kid)).toEqual([old.kid, next]);
    expect(await b.verificationKey(next)).toMatchObject({ alg: 'ES256' });
    expect((await a.activeKey()).kid).toBe(old.kid);
    expect((await b.activeKey()).kid).toBe(old.kid);

    // Every refresh before activates_at keeps signing with the old key.
    time.set(new Date(activatesAt.getTime() - 1));
    expect((await a.activeKey()).kid).toBe(old.kid);
    expect((await b.activeKey()).kid).toBe(old.kid);
    const oldToken = await signTaskToken(
      await b.activeKey(),
      taskTokenClaims(time.clock(), { exp: Math.floor(time.clock().getTime() / 1000) + MAX_TTL_SECONDS }),
    );

    // Due: the first replica to sign promotes it; the other follows at its next signature, although its cache is fresh.
    time.set(activatesAt);
    expect((await b.activeKey()).kid).toBe(next);
    const rows = await keyRows();
    expect(rows.map((r) => [r.kid, r.state, r.activates_at.getTime(), r.retired_at?.getTime(), r.publish_until?.getTime()])).toEqual([
      [old.kid, 'RETIRED', rotatedAt.getTime(), activatesAt.getTime(), activatesAt.getTime() + RETIRED_MS],
      [next, 'ACTIVE', activatesAt.getTime(), undefined, undefined],
    ]);
    expect((await a.activeKey()).kid).toBe(next);
    const newToken = await signTaskToken(await a.activeKey(), taskTokenClaims(time.clock()));
    expect(decodeProtectedHeader(newToken).kid).toBe(next);
    for (const [token, kid] of [
      [oldToken, old.kid],
      [newToken, next],
    ] as const) {
      expect(await checkTaskToken(token, a, { issuer: TOKEN_ISSUER, now: time.clock() })).toMatchObject({ ok: true, kid });
      expect(await checkTaskToken(token, b, { issuer: TOKEN_ISSUER, now: time.clock() })).toMatchObject({ ok: true, kid });
    }
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([next, old.kid]);

    // The old key stays published until every token it signed has expired, then drops out.
    const publishUntil = new Date(activatesAt.getTime() + RETIRED_MS);
    expect(publishUntil.getTime()).toBeGreaterThan((decodeJwt(oldToken).exp ?? Infinity) * 1000);
    time.set(new Date(publishUntil.getTime() - 1));
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([next, old.kid]);
    expect(await b.verificationKey(old.kid)).toBeDefined();
    time.set(publishUntil);
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([next]);
    expect(await a.verificationKey(old.kid)).toBeUndefined();
    expect(await b.verificationKey(old.kid)).toBeUndefined();
    expect(await ring({ clock: time.clock }).verificationKey(old.kid)).toBeUndefined();
    expect(await checkTaskToken(oldToken, a, { issuer: TOKEN_ISSUER, now: rotatedAt })).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('a rotation while a key is pending is FAILED_PRECONDITION naming it and when it activates; a due one is promoted first', async () => {
    const { time, a, b } = await twoReplicas();
    const original = (await a.activeKey()).kid;
    const pending = await a.rotate();
    time.advance(60_000);
    const refusal = await b.rotate().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refusal).toBeInstanceOf(BrokerError);
    expect(refusal).toMatchObject({ kind: 'failed-precondition' });
    expect((refusal as Error).message).toBe(
      `signing key ${pending.kid} is already waiting to become active, at ${pending.activatesAt.toISOString()} (in 5m30s): ` +
        'rotate again after that, or rotate with immediate (emergency: no pre-publication) if the active key is compromised',
    );
    expect(await keyRows()).toHaveLength(2);

    // Due, and no replica has signed since: the rotation promotes it, then schedules the next one.
    time.set(new Date(pending.activatesAt.getTime() + 1000));
    const second = await b.rotate();
    expect(second).toMatchObject({ state: 'NEXT', retiredKid: pending.kid });
    expect(second.activatesAt.getTime()).toBe(time.clock().getTime() + PRE_MS);
    expect((await keyRows()).map((r) => [r.kid, r.state])).toEqual([
      [original, 'RETIRED'],
      [pending.kid, 'ACTIVE'],
      [second.kid, 'NEXT'],
    ]);
    expect((await a.activeKey()).kid).toBe(pending.kid);
  });

  it('replicas promoting a due key at once end with exactly one ACTIVE key and the old one retired once', async () => {
    const { time, a } = await twoReplicas();
    const old = (await a.activeKey()).kid;
    const { logger, lines } = capturedLogger();
    const rings = Array.from({ length: 6 }, (_, i) => ring({ db: i % 2 === 0 ? env.store.db : replicaDb, clock: time.clock, logger }));
    // Every replica has read the keys (so each holds the pending key in its cache) before it is due.
    const { kid: next, activatesAt } = await a.rotate();
    for (const r of rings) expect((await r.activeKey()).kid).toBe(old);
    time.set(new Date(activatesAt.getTime() + 5));
    // Some sign, some serve the JWKS: each path promotes a due key.
    const results = await Promise.all(rings.map((r, i) => (i % 3 === 2 ? r.jwks().then(() => r.activeKey()) : r.activeKey())));
    expect(new Set(results.map((k) => k.kid))).toEqual(new Set([next]));
    const rows = await keyRows();
    expect(rows.filter((r) => r.state === 'ACTIVE').map((r) => r.kid)).toEqual([next]);
    expect(rows.map((r) => [r.kid, r.state, r.retired_at?.getTime(), r.publish_until?.getTime()])).toEqual([
      [old, 'RETIRED', activatesAt.getTime() + 5, activatesAt.getTime() + 5 + RETIRED_MS],
      [next, 'ACTIVE', undefined, undefined],
    ]);
    expect((await a.activeKey()).kid).toBe(next);
    // One of them did it; the others found nothing left to promote.
    expect(lines().filter((l) => String(l.msg).startsWith('the next signing key is due'))).toEqual([expect.objectContaining({ kid: next, retiredKid: old })]);
  });

  it('an immediate rotation makes the new key ACTIVE at once, retires the old key now and drops a pending NEXT key', async () => {
    const { time, a, b } = await twoReplicas();
    const old = (await a.activeKey()).kid;
    const pending = await a.rotate();
    time.advance(1000);
    const now = time.clock();
    const emergency = await b.rotate({ immediate: true });
    expect(emergency).toMatchObject({ state: 'ACTIVE', immediate: true, retiredKid: old, discardedKid: pending.kid });
    expect(emergency.activatesAt.getTime()).toBe(now.getTime());
    expect(emergency.retiredKeyPublishedUntil?.getTime()).toBe(now.getTime() + RETIRED_MS);
    // The dropped key never signed: out of the JWKS at once, kept as a row retired the instant it activated.
    expect((await keyRows()).map((r) => [r.kid, r.state, r.activates_at.getTime(), r.retired_at?.getTime(), r.publish_until?.getTime()])).toEqual([
      [old, 'RETIRED', now.getTime() - 1000, now.getTime(), now.getTime() + RETIRED_MS],
      [pending.kid, 'RETIRED', now.getTime(), now.getTime(), now.getTime()],
      [emergency.kid, 'ACTIVE', now.getTime(), undefined, undefined],
    ]);
    expect((await b.activeKey()).kid).toBe(emergency.kid);
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([emergency.kid, old]);
    // A replica with a fresh cache meets the new kid and re-reads at once; it signs with it after its refresh interval.
    expect(await a.verificationKey(emergency.kid)).toBeDefined();
    expect(await a.verificationKey(pending.kid)).toBeUndefined();
    time.advance(REFRESH_MS);
    expect((await a.activeKey()).kid).toBe(emergency.kid);
  });

  it('concurrent immediate rotations from two replicas both succeed and leave one ACTIVE key', async () => {
    const { time, a, b } = await twoReplicas();
    const original = (await a.activeKey()).kid;
    const results = await Promise.all([a.rotate({ immediate: true }), b.rotate({ immediate: true })]);
    const rows = await keyRows();
    expect(rows).toHaveLength(3);
    expect(rows.filter((r) => r.state === 'ACTIVE')).toHaveLength(1);
    const active = rows.find((r) => r.state === 'ACTIVE')!.kid;
    const first = results.find((r) => r.kid !== active)!;
    expect(results.map((r) => r.kid)).toContain(active);
    // The later rotation retired the earlier one's key, which stays published for the replica
    // that may still sign with it until its next refresh.
    expect(new Set(results.map((r) => r.retiredKid))).toEqual(new Set([original, first.kid]));
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual(expect.arrayContaining([active, first.kid, original]));
    time.advance(REFRESH_MS);
    expect((await a.activeKey()).kid).toBe(active);
    expect((await b.activeKey()).kid).toBe(active);
  });

  it('concurrent scheduled rotations: one adds the next key, the other is refused naming it', async () => {
    const { a, b } = await twoReplicas();
    const settled = await Promise.allSettled([a.rotate(), b.rotate()]);
    const done = settled.filter((r) => r.status === 'fulfilled').map((r) => r.value);
    const refused = settled.filter((r) => r.status === 'rejected').map((r) => r.reason as BrokerError);
    expect(done).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ kind: 'failed-precondition', message: expect.stringContaining(`signing key ${done[0]!.kid} is already waiting`) });
    expect((await keyRows()).map((r) => r.state)).toEqual(['ACTIVE', 'NEXT']);
  });

  it('list(): every published key with its phase times, newest first; with all, also the keys no longer published', async () => {
    const { time, a } = await twoReplicas();
    const first = (await a.activeKey()).kid;
    const t0 = time.clock().getTime();
    const second = await a.rotate();
    time.set(second.activatesAt);
    const third = await a.rotate();
    const t1 = second.activatesAt.getTime();
    expect(await a.list()).toEqual([
      {
        kid: third.kid,
        alg: 'ES256',
        state: 'NEXT',
        createdAt: new Date(t1),
        activatesAt: third.activatesAt,
        retiredAt: undefined,
        publishUntil: undefined,
        published: true,
      },
      {
        kid: second.kid,
        alg: 'ES256',
        state: 'ACTIVE',
        createdAt: new Date(t0),
        activatesAt: new Date(t1),
        retiredAt: undefined,
        publishUntil: undefined,
        published: true,
      },
      {
        kid: first,
        alg: 'ES256',
        state: 'RETIRED',
        createdAt: new Date(t0),
        activatesAt: new Date(t0),
        retiredAt: new Date(t1),
        publishUntil: new Date(t1 + RETIRED_MS),
        published: true,
      },
    ]);
    // Later the third key is due (list() promotes it) and the first one has left the JWKS.
    time.set(new Date(t1 + RETIRED_MS));
    expect((await a.list()).map((k) => [k.kid, k.state])).toEqual([
      [third.kid, 'ACTIVE'],
      [second.kid, 'RETIRED'],
    ]);
    expect((await a.list({ all: true })).map((k) => [k.kid, k.state, k.published])).toEqual([
      [third.kid, 'ACTIVE', true],
      [second.kid, 'RETIRED', true],
      [first, 'RETIRED', false],
    ]);
    expect(a.prePublicationMs).toBe(PRE_MS);
    expect(a.retiredPublicationMs).toBe(RETIRED_MS);
  });

  it('refuses a pre-publication period shorter than the JWKS cache lifetime plus the refresh interval, and warns below the whole chain', () => {
    expect(() => ring({ prePublicationMs: 89_999 })).toThrow(
      'the signing-key pre-publication period must be at least 1m30s (the JWKS cache lifetime, 60s, plus the key refresh interval, 30s), got 89999 ms',
    );
    expect(() => ring({ prePublicationMs: Number.NaN })).toThrow(/pre-publication period must be at least 1m30s/);
    const quiet = capturedLogger();
    expect(ring({ prePublicationMs: PRE_MS, logger: quiet.logger }).prePublicationMs).toBe(PRE_MS);
    expect(quiet.lines()).toEqual([]);
    const short = capturedLogger();
    expect(ring({ prePublicationMs: 90_000, logger: short.logger }).prePublicationMs).toBe(90_000);
    expect(short.lines()).toEqual([expect.objectContaining({ level: 'warn', prePublicationMs: 90_000, recommendedMs: PRE_MS })]);
  });

  it('an ACTIVE key of another alg is kept (with a warning) until rotated', async () => {
    await resetKeys();
    await ring({ alg: 'EdDSA' }).init();
    const { logger, lines } = capturedLogger();
    const es = ring({ alg: 'ES256', logger });
    await es.init();
    expect((await es.activeKey()).alg).toBe('EdDSA');
    expect(lines().some((l) => l.level === 'warn' && l.configuredAlg === 'ES256' && l.activeAlg === 'EdDSA')).toBe(true);
    await es.rotate({ immediate: true });
    expect((await es.activeKey()).alg).toBe('ES256');
  });
});
