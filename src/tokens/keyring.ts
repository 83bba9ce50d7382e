/**
 * Token signing keys, persisted in `signing_keys` so every replica signs with the same key and
 * verifies every other replica's tokens. Exactly one key is ACTIVE (a unique partial index
 * enforces it); a rotated-out key stays RETIRED and published until every token it can have
 * signed has expired. Private keys are stored as PKCS#8 DER encrypted under the KEK, with the
 * kid as associated data so a ciphertext cannot be moved to another row (signing-key-material.ts).
 *
 * Replicas do not talk to each other: each re-reads the table when its cache is older than
 * `refreshIntervalMs`, and at once when it meets a kid it does not know.
 */
import type { KeyObject } from 'node:crypto';
import type { CryptoKey, JWK } from 'jose';
import type { Logger } from '../observability/logger.js';
import type { Db, Tx } from '../store/database.js';
import type { SigningKeyRow, SigningKeyState } from '../store/schema.js';
import { isUniqueViolation } from '../store/failures.js';
import type { KeyEncryptionKey } from './kek.js';
import { generateSigningKey, privateKeyOf, publicKeyOf } from './signing-key-material.js';
import { isTokenAlg, type TokenAlg } from './token-alg.js';

export { TOKEN_ALGS, isTokenAlg, type TokenAlg } from './token-alg.js';

export interface SigningKey {
  kid: string;
  alg: TokenAlg;
  privateKey: CryptoKey | KeyObject;
  /** Public members only, with `kid`, `alg` and `use: 'sig'`. */
  publicJwk: JWK;
}

export interface VerificationKey {
  alg: TokenAlg;
  publicKey: CryptoKey | KeyObject;
}

/** What token verification needs from a key ring. */
export interface VerificationKeySource {
  verificationKey(kid: string): Promise<VerificationKey | undefined>;
}

export interface SigningKeyRingOptions {
  db: Db;
  kek: KeyEncryptionKey;
  /** Algorithm of keys this ring creates. An existing ACTIVE key of another alg is used until rotated. */
  alg: TokenAlg;
  clock?: () => Date;
  /** The longest lifetime of any token signed: how long a retired key must stay published. */
  maxTokenTtlSeconds: number;
  /** How stale the cache may get before it is re-read; default 30 s. */
  refreshIntervalMs?: number;
  logger: Logger;
}

interface CachedKey {
  kid: string;
  alg: TokenAlg;
  state: SigningKeyState;
  publishUntil: Date | undefined;
  publicJwk: JWK;
  publicKey: KeyObject;
}

interface Snapshot {
  /** Clock time (ms) at which the read started. */
  loadedAt: number;
  active: SigningKey | undefined;
  /** ACTIVE key first, then RETIRED keys still published at load time. */
  keys: Map<string, CachedKey>;
}

const ROTATE_ATTEMPTS = 3;

export class SigningKeyRing implements VerificationKeySource {
  readonly #db: Db;
  readonly #kek: KeyEncryptionKey;
  readonly #alg: TokenAlg;
  readonly #clock: () => Date;
  readonly #maxTokenTtlMs: number;
  readonly #refreshIntervalMs: number;
  readonly #log: Logger;

  #snapshot: Snapshot | undefined;
  /** The read in progress, and one queued read shared by everyone who asked while it ran. */
  #loading: Promise<Snapshot> | undefined;
  #queued: Promise<Snapshot> | undefined;

  constructor(options: SigningKeyRingOptions) {
    if (!isTokenAlg(options.alg)) throw new Error(`unsupported token signing algorithm ${String(options.alg)} (ES256, EdDSA)`);
    if (!Number.isFinite(options.maxTokenTtlSeconds) || options.maxTokenTtlSeconds <= 0) {
      throw new Error(`maxTokenTtlSeconds must be a positive number, got ${options.maxTokenTtlSeconds}`);
    }
    const refreshIntervalMs = options.refreshIntervalMs ?? 30_000;
    if (!Number.isFinite(refreshIntervalMs) || refreshIntervalMs < 0) {
      throw new Error(`refreshIntervalMs must be a non-negative number, got ${refreshIntervalMs}`);
    }
    this.#db = options.db;
    this.#kek = options.kek;
    this.#alg = options.alg;
    this.#clock = options.clock ?? (() => new Date());
    this.#maxTokenTtlMs = options.maxTokenTtlSeconds * 1000;
    this.#refreshIntervalMs = refreshIntervalMs;
    this.#log = options.logger.child({ component: 'signing-keys' });
  }

  /** Makes sure an ACTIVE key exists, creating one if none does. Safe when replicas start together. */
  async init(): Promise<void> {
    const existing = await this.#db.selectFrom('signing_keys').select(['kid', 'alg']).where('state', '=', 'ACTIVE').executeTakeFirst();
    if (existing) {
      if (existing.alg !== this.#alg) {
        this.#log.warn(
          { kid: existing.kid, activeAlg: existing.alg, configuredAlg: this.#alg },
          'active signing key uses another algorithm than configured; rotate keys to switch',
        );
      }
    } else {
      const fresh = await generateSigningKey(this.#alg, this.#kek);
      // Another replica may insert its own ACTIVE key at the same moment: the unique partial
      // index lets exactly one in, and everyone then reads that one.
      const inserted = await this.#db
        .insertInto('signing_keys')
        .values({ ...fresh, state: 'ACTIVE', created_at: this.#clock(), retired_at: null, publish_until: null })
        .onConflict((oc) => oc.doNothing())
        .returning('kid')
        .executeTakeFirst();
      if (inserted) this.#log.info({ kid: fresh.kid, alg: this.#alg, kekId: this.#kek.id }, 'created the first signing key');
      else this.#log.debug('another replica created the active signing key first');
    }
    const snapshot = await this.#read();
    if (!snapshot.active) throw new Error('no ACTIVE signing key after initialisation (was it deleted concurrently?)');
  }

  /** The key to sign with. Re-read from the database once the cache is older than refreshIntervalMs. */
  async activeKey(): Promise<SigningKey> {
    const snapshot = await this.#current();
    if (!snapshot.active) throw new Error('no ACTIVE signing key in the database; SigningKeyRing.init() must run first');
    return snapshot.active;
  }

  /** The public key for `kid`, or undefined when it is unknown or retired and no longer published. */
  async verificationKey(kid: string): Promise<VerificationKey | undefined> {
    let key = (await this.#current()).keys.get(kid);
    // Another replica may have rotated since the last read.
    key ??= (await this.#read()).keys.get(kid);
    if (!key || !this.#isPublished(key, this.#clock())) return undefined;
    return { alg: key.alg, publicKey: key.publicKey };
  }

  /**
   * The active key and every retired key still published. Read from the database each time
   * (concurrent calls share one read) so a key rotated in by another replica is published at
   * once; HTTP caching bounds how often that happens. Falls back to the cache if the read fails.
   */
  async jwks(): Promise<{ keys: JWK[] }> {
    let snapshot: Snapshot;
    try {
      snapshot = await this.#read();
    } catch (err) {
      if (!this.#snapshot) throw err;
      this.#log.warn({ err }, 'cannot re-read signing keys; serving the cached key set');
      snapshot = this.#snapshot;
    }
    const now = this.#clock();
    return { keys: [...snapshot.keys.values()].filter((k) => this.#isPublished(k, now)).map((k) => ({ ...k.publicJwk })) };
  }

  /**
   * Makes a new key ACTIVE and retires the current one (still published for the longest token
   * lifetime plus one refresh interval, since replicas that have not re-read yet keep signing
   * with it). `inTransaction` runs inside the rotation's transaction (the caller's audit event),
   * so the rotation and its record commit together.
   */
  async rotate(
    inTransaction?: (tx: Tx, rotation: { kid: string; retiredKid: string | undefined }) => Promise<void>,
  ): Promise<{ kid: string; retiredKid: string | undefined }> {
    const fresh = await generateSigningKey(this.#alg, this.#kek);
    let retiredKid: string | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        retiredKid = await this.#db.transaction().execute(async (tx) => {
          const now = this.#clock();
          const current = await tx.selectFrom('signing_keys').select('kid').where('state', '=', 'ACTIVE').forUpdate().executeTakeFirst();
          if (current) {
            await tx
              .updateTable('signing_keys')
              .set({ state: 'RETIRED', retired_at: now, publish_until: new Date(now.getTime() + this.#maxTokenTtlMs + this.#refreshIntervalMs) })
              .where('kid', '=', current.kid)
              .execute();
          }
          await tx
            .insertInto('signing_keys')
            .values({ ...fresh, state: 'ACTIVE', created_at: now, retired_at: null, publish_until: null })
            .execute();
          await inTransaction?.(tx, { kid: fresh.kid, retiredKid: current?.kid });
          return current?.kid;
        });
        break;
      } catch (err) {
        // A concurrent rotation committed first: our FOR UPDATE then finds no ACTIVE row and our
        // insert collides with its new key. Rotating again on top of it is what was asked for.
        if (attempt < ROTATE_ATTEMPTS && isUniqueViolation(err)) continue;
        throw err;
      }
    }
    this.#log.info({ kid: fresh.kid, retiredKid, alg: this.#alg, kekId: this.#kek.id }, 'rotated the signing key');
    await this.#read();
    return { kid: fresh.kid, retiredKid };
  }

  #isPublished(key: CachedKey, now: Date): boolean {
    return key.state === 'ACTIVE' || (key.publishUntil !== undefined && key.publishUntil.getTime() > now.getTime());
  }

  /** The cached snapshot, re-read when older than the refresh interval (or the clock went back). */
  #current(): Promise<Snapshot> {
    const snapshot = this.#snapshot;
    if (snapshot) {
      const age = this.#clock().getTime() - snapshot.loadedAt;
      if (age >= 0 && age < this.#refreshIntervalMs) return Promise.resolve(snapshot);
    }
    return this.#loading ?? this.#read();
  }

  /**
   * A read of the table that starts after this call. Callers arriving while a read runs share
   * one queued read that starts when it finishes, so the database sees at most one read at a
   * time per ring, and nobody is answered from a read that began before they asked.
   */
  #read(): Promise<Snapshot> {
    if (!this.#loading) return this.#startRead();
    this.#queued ??= this.#loading
      .catch(() => undefined)
      .then(() => {
        this.#queued = undefined;
        return this.#loading ?? this.#startRead();
      });
    return this.#queued;
  }

  #startRead(): Promise<Snapshot> {
    const loading = this.#load().finally(() => {
      if (this.#loading === loading) this.#loading = undefined;
    });
    this.#loading = loading;
    return loading;
  }

  async #load(): Promise<Snapshot> {
    const now = this.#clock();
    const rows = await this.#db
      .selectFrom('signing_keys')
      .selectAll()
      .where((eb) => eb.or([eb('state', '=', 'ACTIVE'), eb('publish_until', '>', now)]))
      .orderBy('state')
      .orderBy('created_at', 'desc')
      .execute();
    const previous = this.#snapshot;
    const keys = new Map<string, CachedKey>();
    let active: SigningKey | undefined;
    for (const row of rows) {
      const known = previous?.keys.get(row.kid);
      const key = known && known.alg === row.alg ? { ...known, state: row.state, publishUntil: row.publish_until ?? undefined } : await parsePublic(row);
      if (row.state === 'ACTIVE') {
        active = previous?.active?.kid === row.kid ? previous.active : privateKeyOf(row, key.alg, key.publicJwk, this.#kek);
      }
      keys.set(row.kid, key);
    }
    const snapshot: Snapshot = { loadedAt: now.getTime(), active, keys };
    if (previous?.active?.kid !== active?.kid) {
      this.#log.info({ kid: active?.kid, previousKid: previous?.active?.kid }, 'active signing key loaded');
    }
    this.#snapshot = snapshot;
    return snapshot;
  }
}

async function parsePublic(row: SigningKeyRow): Promise<CachedKey> {
  if (!isTokenAlg(row.alg)) throw new Error(`signing key ${row.kid} has unsupported alg ${row.alg}`);
  const { publicJwk, publicKey } = await publicKeyOf(row, row.alg);
  return { kid: row.kid, alg: row.alg, state: row.state, publishUntil: row.publish_until ?? undefined, publicJwk, publicKey };
}
