import { KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/store/database.js';
import { silentLogger, type Logger } from '../../src/observability/logger.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { SigningKeyRing, type TokenAlg } from '../../src/tokens/keyring.js';
import { checkTaskToken, signTaskToken } from '../../src/tokens/task-token.js';
import { migratedStore, STORES } from '../helpers/db.js';
import { capturedLogger } from '../helpers/logs.js';
import { taskTokenClaims, TOKEN_ISSUER } from '../helpers/task-token.js';

const MAX_TTL_SECONDS = 600;
const REFRESH_MS = 30_000;

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

  const ring = (options: { db?: Db; alg?: TokenAlg; clock?: () => Date; logger?: Logger; kek?: KeyEncryptionKey } = {}) =>
    new SigningKeyRing({
      db: options.db ?? env.store.db,
      kek: options.kek ?? kek,
      alg: options.alg ?? 'ES256',
      clock: options.clock,
      maxTokenTtlSeconds: MAX_TTL_SECONDS,
      refreshIntervalMs: REFRESH_MS,
      logger: options.logger ?? silentLogger(),
    });
  const resetKeys = () => env.store.db.deleteFrom('signing_keys').execute();
  const keyRows = () => env.store.db.selectFrom('signing_keys').selectAll().orderBy('created_at').execute();
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
    await r.rotate();
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

  it('rotate(): new key active, old one verifies and stays published until publish_until, then drops out', async () => {
    const { time, a, b } = await twoReplicas();
    const old = await a.activeKey();
    expect((await b.activeKey()).kid).toBe(old.kid);
    const oldToken = await signTaskToken(old, taskTokenClaims(time.clock(), { exp: Math.floor(time.clock().getTime() / 1000) + MAX_TTL_SECONDS }));

    const rotatedAt = time.clock();
    const { kid, retiredKid } = await a.rotate();
    expect(retiredKid).toBe(old.kid);
    expect(kid).not.toBe(old.kid);
    expect((await a.activeKey()).kid).toBe(kid);

    const rows = await keyRows();
    expect(rows.map((r) => [r.kid, r.state])).toEqual([
      [old.kid, 'RETIRED'],
      [kid, 'ACTIVE'],
    ]);
    const publishUntil = new Date(rotatedAt.getTime() + MAX_TTL_SECONDS * 1000 + REFRESH_MS);
    expect(rows[0]!.retired_at?.getTime()).toBe(rotatedAt.getTime());
    expect(rows[0]!.publish_until?.getTime()).toBe(publishUntil.getTime());

    // B has not re-read yet: it keeps signing with the old key, but already verifies the new
    // one (an unknown kid makes it re-read at once).
    expect((await b.activeKey()).kid).toBe(old.kid);
    const newToken = await signTaskToken(await a.activeKey(), taskTokenClaims(time.clock()));
    expect(await checkTaskToken(newToken, b, { issuer: TOKEN_ISSUER, now: time.clock() })).toMatchObject({ ok: true, kid });
    expect(await checkTaskToken(oldToken, b, { issuer: TOKEN_ISSUER, now: time.clock() })).toMatchObject({ ok: true, kid: old.kid });
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([kid, old.kid]);
    expect((await b.jwks()).keys.map((k) => k.kid)).toEqual([kid, old.kid]);

    time.advance(REFRESH_MS);
    expect((await b.activeKey()).kid).toBe(kid);

    time.set(new Date(publishUntil.getTime() - 1));
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([kid, old.kid]);
    expect(await b.verificationKey(old.kid)).toBeDefined();

    time.set(publishUntil);
    expect((await a.jwks()).keys.map((k) => k.kid)).toEqual([kid]);
    expect(await a.verificationKey(old.kid)).toBeUndefined();
    expect(await b.verificationKey(old.kid)).toBeUndefined();
    expect(await ring({ clock: time.clock }).verificationKey(old.kid)).toBeUndefined();
    expect(await a.verificationKey(kid)).toMatchObject({ alg: 'ES256' });
    expect(await checkTaskToken(oldToken, a, { issuer: TOKEN_ISSUER, now: rotatedAt })).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('concurrent rotations from two replicas both succeed and leave one ACTIVE key', async () => {
    const { time, a, b } = await twoReplicas();
    const original = (await a.activeKey()).kid;
    const results = await Promise.all([a.rotate(), b.rotate()]);
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

  it('an ACTIVE key of another alg is kept (with a warning) until rotated', async () => {
    await resetKeys();
    await ring({ alg: 'EdDSA' }).init();
    const { logger, lines } = capturedLogger();
    const es = ring({ alg: 'ES256', logger });
    await es.init();
    expect((await es.activeKey()).alg).toBe('EdDSA');
    expect(lines().some((l) => l.level === 'warn' && l.configuredAlg === 'ES256' && l.activeAlg === 'EdDSA')).toBe(true);
    await es.rotate();
    expect((await es.activeKey()).alg).toBe('ES256');
  });
});
