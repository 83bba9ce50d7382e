/**
 * Migration 0008 on a database that already has keys (made under 0001–0006, before NEXT
 * existed), on PostgreSQL and PGlite: the keys keep their state and get activates_at = created_at,
 * the state check admits NEXT and still refuses anything else, at most one key is NEXT, and a key
 * ring carries on from the old ACTIVE key into a pre-published rotation. The previous release,
 * still running during a rolling upgrade, can insert keys without the new column.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observability/logger.js';
import type { Store } from '../../src/store/database.js';
import { isUniqueViolation } from '../../src/store/failures.js';
import { loadMigrations, migrate } from '../../src/store/migrate.js';
import { generateKekBase64, KeyEncryptionKey } from '../../src/tokens/kek.js';
import { SigningKeyRing } from '../../src/tokens/keyring.js';
import { generateSigningKey } from '../../src/tokens/signing-key-material.js';
import { createTestDatabase, STORES, type TestDatabase } from '../helpers/db.js';

const MIGRATION = '0008_signing_key_pre_publication';

describe.each(STORES)('migration 0008 (signing-key pre-publication) on %s', (kind) => {
  let database: TestDatabase;
  let store: Store;
  const kek = KeyEncryptionKey.fromBase64(generateKekBase64());
  const created = { active: new Date('2029-12-01T00:00:00Z'), retired: new Date('2029-11-01T00:00:00Z') };
  let kids: { active: string; retired: string };

  beforeAll(async () => {
    database = await createTestDatabase(kind);
    store = await database.open();
    const all = await loadMigrations();
    expect(all.map((m) => m.version)).toContain(MIGRATION);
    await migrate(
      store.db,
      all.filter((m) => m.version < MIGRATION),
    );
    // Keys as the broker wrote them before 0008 (no activates_at column yet).
    const [active, retired] = await Promise.all([generateSigningKey('ES256', kek), generateSigningKey('ES256', kek)]);
    kids = { active: active.kid, retired: retired.kid };
    for (const [key, state, at, publishUntil] of [
      [active, 'ACTIVE', created.active, null],
      [retired, 'RETIRED', created.retired, new Date('2030-01-01T00:00:00Z')],
    ] as const) {
      await sql`insert into signing_keys (kid, alg, public_jwk, private_key_ciphertext, kek_id, state, created_at, retired_at, publish_until)
        values (${key.kid}, ${key.alg}, ${key.public_jwk}::jsonb, ${key.private_key_ciphertext}, ${key.kek_id}, ${state}, ${at}, ${state === 'RETIRED' ? created.active : null}, ${publishUntil})`.execute(
        store.db,
      );
    }
    expect(await migrate(store.db)).toEqual(all.filter((m) => m.version >= MIGRATION).map((m) => m.version));
  });
  afterAll(async () => {
    await store?.close();
    await database?.drop();
  });

  it('keeps every key and its state, and sets activates_at to when each was created', async () => {
    const rows = await store.db.selectFrom('signing_keys').select(['kid', 'state', 'created_at', 'activates_at']).orderBy('created_at').execute();
    expect(rows).toEqual([
      { kid: kids.retired, state: 'RETIRED', created_at: created.retired, activates_at: created.retired },
      { kid: kids.active, state: 'ACTIVE', created_at: created.active, activates_at: created.active },
    ]);
  });

  it('admits NEXT, at most one NEXT key, and still refuses any other state or a missing activates_at', async () => {
    const insert = async (state: string, activatesAt: Date | null) => {
      const key = await generateSigningKey('ES256', kek);
      await sql`insert into signing_keys (kid, alg, public_jwk, private_key_ciphertext, kek_id, state, created_at, activates_at)
        values (${key.kid}, ${key.alg}, ${key.public_jwk}::jsonb, ${key.private_key_ciphertext}, ${key.kek_id}, ${state}, now(), ${activatesAt})`.execute(
        store.db,
      );
      return key.kid;
    };
    const next = await insert('NEXT', new Date('2030-01-02T00:00:00Z'));
    const second = await insert('NEXT', new Date('2030-01-03T00:00:00Z')).catch((err: unknown) => err);
    expect(isUniqueViolation(second)).toBe(true);
    await expect(insert('PENDING', new Date())).rejects.toThrow(/signing_keys_state_check/);
    await expect(insert('RETIRED', null)).rejects.toThrow(/activates_at/);
    await store.db.deleteFrom('signing_keys').where('kid', '=', next).execute();
  });

  it('a key the previous release inserts during a rolling upgrade (no activates_at) counts as active from its insertion', async () => {
    const key = await generateSigningKey('ES256', kek);
    const before = Date.now();
    await sql`insert into signing_keys (kid, alg, public_jwk, private_key_ciphertext, kek_id, state, created_at)
      values (${key.kid}, ${key.alg}, ${key.public_jwk}::jsonb, ${key.private_key_ciphertext}, ${key.kek_id}, 'RETIRED', now())`.execute(store.db);
    const row = await store.db.selectFrom('signing_keys').select(['activates_at', 'created_at']).where('kid', '=', key.kid).executeTakeFirstOrThrow();
    expect(row.activates_at.getTime()).toBe(row.created_at.getTime());
    expect(row.activates_at.getTime()).toBeGreaterThanOrEqual(before - 60_000);
    await store.db.deleteFrom('signing_keys').where('kid', '=', key.kid).execute();
  });

  it('a key ring carries on with the old ACTIVE key and rotates into a NEXT key', async () => {
    const now = new Date('2029-12-15T00:00:00Z');
    const ring = new SigningKeyRing({ db: store.db, kek, alg: 'ES256', clock: () => now, maxTokenTtlSeconds: 600, logger: silentLogger() });
    await ring.init();
    expect((await ring.activeKey()).kid).toBe(kids.active);
    const rotation = await ring.rotate();
    expect(rotation).toMatchObject({ state: 'NEXT', retiredKid: kids.active });
    expect((await ring.jwks()).keys.map((k) => k.kid)).toEqual([kids.active, rotation.kid, kids.retired]);
  });
});
