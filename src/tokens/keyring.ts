/**
 * Token signing keys, persisted in `signing_keys` so every replica signs with the same key and
 * verifies every other replica's tokens. A key goes NEXT → ACTIVE → RETIRED → gone from the JWKS:
 *
 * - NEXT: published, never signs. A rotation adds the next key this way, due `prePublicationMs`
 *   later (activates_at), so every cache between the table and a verifier (key-publication.ts)
 *   holds it before the first token names it. At most one (a unique partial index).
 * - ACTIVE: signs. Exactly one (a unique partial index). The first replica that signs or reads
 *   the keys after a NEXT key's activates_at promotes it, in one transaction under row locks:
 *   NEXT → ACTIVE, the old ACTIVE → RETIRED. Replicas racing to do it end with one ACTIVE key.
 * - RETIRED: published until every token it can have signed has expired (publish_until), then
 *   left out of the JWKS (the row stays: tokens name it).
 *
 * An immediate rotation (a compromised key) skips NEXT: the new key is ACTIVE at once and a
 * pending NEXT key is dropped (it never signed: RETIRED and out of the JWKS at once). The first key of an empty database is ACTIVE at
 * once too: no cache anywhere holds a key set yet.
 *
 * Private keys are stored as PKCS#8 DER encrypted under the KEK, with the kid as associated data
 * so a ciphertext cannot be moved to another row (signing-key-material.ts).
 *
 * Replicas do not talk to each other: each re-reads the table when its cache is older than
 * `refreshIntervalMs`, when a pending key has come due, and at once when it meets a kid it does
 * not know.
 */
import type { KeyObject } from 'node:crypto';
import type { CryptoKey, JWK } from 'jose';
import type { Logger } from '../observability/logger.js';
import type { Db, Tx } from '../store/database.js';
import type { Schema, SigningKeyRow, SigningKeyState } from '../store/schema.js';
import type { ExpressionBuilder } from 'kysely';
import { isUniqueViolation } from '../store/failures.js';
import { BrokerError } from '../errors.js';
import type { KeyEncryptionKey } from './kek.js';
import {
  DEFAULT_KEY_REFRESH_INTERVAL_MS,
  DEFAULT_PRE_PUBLICATION_MS,
  JWKS_MAX_AGE_SECONDS,
  minimumPrePublicationMs,
  prePublicationChainMs,
  readableDuration,
  retiredPublicationMs,
  VERIFIER_KEY_MAX_AGE_MS,
} from './key-publication.js';
import { generateSigningKey, privateKeyOf, publicKeyOf, type SigningKeyMaterial } from './signing-key-material.js';
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
  /**
   * How long a rotated-in key is published (NEXT) before it signs; default 6 min 30 s
   * (DEFAULT_PRE_PUBLICATION_MS). At least the JWKS cache lifetime plus refreshIntervalMs.
   */
  prePublicationMs?: number;
  logger: Logger;
}

/** What a rotation did. */
export interface Rotation {
  kid: string;
  alg: TokenAlg;
  /** NEXT: published now, signs from activatesAt; ACTIVE: signs now (an immediate rotation, or no key was active). */
  state: 'NEXT' | 'ACTIVE';
  activatesAt: Date;
  /** Pre-publication skipped on request (a compromised key). */
  immediate: boolean;
  /** The key this rotation retires (when the new one activates); undefined when none was active. */
  retiredKid: string | undefined;
  /**
   * When the retired key leaves the JWKS: activatesAt plus the retired publication period. For a
   * NEXT key the earliest time: the retirement happens at the promotion, on the first signature or
   * read of the keys after activatesAt.
   */
  retiredKeyPublishedUntil: Date | undefined;
  /** The pending NEXT key an immediate rotation dropped: it never signed, and leaves the JWKS at once (RETIRED, activated and retired at the same instant). */
  discardedKid: string | undefined;
}

/** One key as ListSigningKeys shows it: no key material. */
export interface SigningKeyInfo {
  kid: string;
  alg: string;
  state: SigningKeyState;
  createdAt: Date;
  /** NEXT: when it becomes ACTIVE; otherwise when it did. */
  activatesAt: Date;
  retiredAt: Date | undefined;
  /** RETIRED: when it leaves the JWKS; undefined while NEXT or ACTIVE (retirement plus the retired publication period). */
  publishUntil: Date | undefined;
  /** In the JWKS now. */
  published: boolean;
}

/** ListSigningKeys with `all` returns at most this many keys, newest first. */
const MAX_LISTED_KEYS = 1000;

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
  /** The pending key and when it is due. */
  next: { kid: string; activatesAt: Date } | undefined;
  /** ACTIVE key first, then the NEXT key, then RETIRED keys still published at load time. */
  keys: Map<string, CachedKey>;
}

/** The rows a rotation or a promotion locks: the ACTIVE and the NEXT key. */
interface CurrentKeys {
  active: { kid: string } | undefined;
  next: { kid: string; activates_at: Date } | undefined;
}

const ROTATE_ATTEMPTS = 3;

export class SigningKeyRing implements VerificationKeySource {
  readonly #db: Db;
  readonly #kek: KeyEncryptionKey;
  readonly #alg: TokenAlg;
  readonly #clock: () => Date;
  readonly #refreshIntervalMs: number;
  readonly #prePublicationMs: number;
  readonly #retiredPublicationMs: number;
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
    const refreshIntervalMs = options.refreshIntervalMs ?? DEFAULT_KEY_REFRESH_INTERVAL_MS;
    if (!Number.isFinite(refreshIntervalMs) || refreshIntervalMs < 0) {
      throw new Error(`refreshIntervalMs must be a non-negative number, got ${refreshIntervalMs}`);
    }
    const prePublicationMs = options.prePublicationMs ?? DEFAULT_PRE_PUBLICATION_MS;
    const minimum = minimumPrePublicationMs(refreshIntervalMs);
    if (!Number.isFinite(prePublicationMs) || prePublicationMs < minimum) {
      throw new Error(
        `the signing-key pre-publication period must be at least ${readableDuration(minimum)} (the JWKS cache lifetime, ` +
          `${JWKS_MAX_AGE_SECONDS}s, plus the key refresh interval, ${readableDuration(refreshIntervalMs)}), got ${prePublicationMs} ms`,
      );
    }
    this.#db = options.db;
    this.#kek = options.kek;
    this.#alg = options.alg;
    this.#clock = options.clock ?? (() => new Date());
    this.#refreshIntervalMs = refreshIntervalMs;
    this.#prePublicationMs = prePublicationMs;
    this.#retiredPublicationMs = retiredPublicationMs(options.maxTokenTtlSeconds, refreshIntervalMs);
    this.#log = options.logger.child({ component: 'signing-keys' });
    const chain = prePublicationChainMs({
      jwksMaxAgeMs: JWKS_MAX_AGE_SECONDS * 1000,
      keyRefreshIntervalMs: refreshIntervalMs,
      verifierKeyMaxAgeMs: VERIFIER_KEY_MAX_AGE_MS,
    });
    if (prePublicationMs < chain) {
      this.#log.warn(
        { prePublicationMs, recommendedMs: chain },
        'the signing-key pre-publication period is shorter than the JWKS cache lifetime, the key refresh interval and the verifier SDK key max age together: ' +
          'a verifier may meet a new key before its cached key set has it, and has to fetch the keys then',
      );
    }
  }

  /** How long a rotated-in key is published before it signs. */
  get prePublicationMs(): number {
    return this.#prePublicationMs;
  }

  /** How long a retired key stays published after it stopped signing: the longest token lifetime plus one refresh interval. */
  get retiredPublicationMs(): number {
    return this.#retiredPublicationMs;
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
      // The first key signs at once: no cache anywhere holds a key set yet. Another replica may
      // insert its own ACTIVE key at the same moment: the unique partial index lets exactly one
      // in, and everyone then reads that one.
      const now = this.#clock();
      const inserted = await this.#db
        .insertInto('signing_keys')
        .values(this.#row(fresh, 'ACTIVE', now, now))
        .onConflict((oc) => oc.doNothing())
        .returning('kid')
        .executeTakeFirst();
      if (inserted) this.#log.info({ kid: fresh.kid, alg: this.#alg, kekId: this.#kek.id }, 'created the first signing key');
      else this.#log.debug('another replica created the active signing key first');
    }
    const snapshot = await this.#read();
    if (!snapshot.active) throw new Error('no ACTIVE signing key after initialisation (was it deleted concurrently?)');
  }

  /**
   * The key to sign with. Re-read from the database once the cache is older than refreshIntervalMs,
   * or once the pending key has come due (the read promotes it, unless another replica did).
   */
  async activeKey(): Promise<SigningKey> {
    let snapshot = await this.#current();
    if (snapshot.next && snapshot.next.activatesAt.getTime() <= this.#clock().getTime()) snapshot = await this.#read();
    if (!snapshot.active) throw new Error('no ACTIVE signing key in the database; SigningKeyRing.init() must run first');
    return snapshot.active;
  }

  /** The public key for `kid` (any published key: NEXT, ACTIVE, RETIRED until publish_until), or undefined. */
  async verificationKey(kid: string): Promise<VerificationKey | undefined> {
    let key = (await this.#current()).keys.get(kid);
    // Another replica may have rotated since the last read.
    key ??= (await this.#read()).keys.get(kid);
    if (!key || !isPublished(key.state, key.publishUntil, this.#clock())) return undefined;
    return { alg: key.alg, publicKey: key.publicKey };
  }

  /**
   * The active key, the next key and every retired key still published. Read from the database
   * each time (concurrent calls share one read) so a key rotated in by another replica is
   * published at once; HTTP caching bounds how often that happens. Falls back to the cache if the
   * read fails.
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
    return { keys: [...snapshot.keys.values()].filter((k) => isPublished(k.state, k.publishUntil, now)).map((k) => ({ ...k.publicJwk })) };
  }

  /**
   * Adds a new key. Normally it is NEXT: published now, ACTIVE from now + prePublicationMs, when
   * the current key is retired. With `immediate` (a compromised key) it is ACTIVE at once, the
   * current key RETIRED now, and a pending NEXT key dropped (out of the JWKS at once). With no
   * ACTIVE key it is ACTIVE at once either way. A retired key stays published for retiredPublicationMs.
   *
   * While a NEXT key is pending (not yet due) a rotation without `immediate` is refused
   * (failed-precondition, naming the key and when it activates); a due one is promoted first.
   * `inTransaction` runs inside the rotation's transaction (the caller's audit event), so the
   * rotation and its record commit together.
   */
  async rotate(options: { immediate?: boolean } = {}, inTransaction?: (tx: Tx, rotation: Rotation) => Promise<void>): Promise<Rotation> {
    const immediate = options.immediate === true;
    const fresh = await generateSigningKey(this.#alg, this.#kek);
    let rotation: Rotation;
    for (let attempt = 1; ; attempt++) {
      try {
        rotation = await this.#db.transaction().execute(async (tx) => {
          const now = this.#clock();
          let { active, next } = await this.#lockCurrent(tx);
          let discardedKid: string | undefined;
          if (next && immediate) {
            // It never signed, so nothing needs it published: out of the JWKS at once (it may be as
            // exposed as the key being replaced). Kept as a row, retired the instant it activated.
            await tx
              .updateTable('signing_keys')
              .set({ state: 'RETIRED', activates_at: now, retired_at: now, publish_until: now })
              .where('kid', '=', next.kid)
              .execute();
            discardedKid = next.kid;
            next = undefined;
          }
          if (next) {
            if (next.activates_at.getTime() > now.getTime()) throw this.#pending(next, now);
            await this.#promoteIn(tx, { active, next }, now);
            this.#log.info({ kid: next.kid, retiredKid: active?.kid }, 'promoted the due next signing key before rotating');
            active = { kid: next.kid };
          }
          const scheduled = active !== undefined && !immediate;
          const activatesAt = scheduled ? new Date(now.getTime() + this.#prePublicationMs) : now;
          if (active && !scheduled) await this.#retire(tx, active.kid, now);
          await tx
            .insertInto('signing_keys')
            .values(this.#row(fresh, scheduled ? 'NEXT' : 'ACTIVE', now, activatesAt))
            .execute();
          const done: Rotation = {
            kid: fresh.kid,
            alg: this.#alg,
            state: scheduled ? 'NEXT' : 'ACTIVE',
            activatesAt,
            immediate,
            retiredKid: active?.kid,
            retiredKeyPublishedUntil: active ? new Date(activatesAt.getTime() + this.#retiredPublicationMs) : undefined,
            discardedKid,
          };
          await inTransaction?.(tx, done);
          return done;
        });
        break;
      } catch (err) {
        // A concurrent rotation committed first: our FOR UPDATE did not see its new row and our
        // insert collided with it. Trying again sees it (and refuses, or rotates on top of it).
        if (attempt < ROTATE_ATTEMPTS && isUniqueViolation(err)) continue;
        throw err;
      }
    }
    this.#log.info(
      {
        kid: rotation.kid,
        state: rotation.state,
        activatesAt: rotation.activatesAt.toISOString(),
        retiredKid: rotation.retiredKid,
        immediate,
        discardedKid: rotation.discardedKid,
        alg: this.#alg,
        kekId: this.#kek.id,
      },
      rotation.state === 'NEXT'
        ? 'rotated the signing key: the next key is published and signs from activatesAt'
        : 'rotated the signing key: the new key signs now',
    );
    await this.#read();
    return rotation;
  }

  /**
   * Every key in the JWKS now (NEXT, ACTIVE, RETIRED until publish_until), newest first; with
   * `all` also the retired keys no longer published (at most MAX_LISTED_KEYS). Read fresh, after
   * promoting a due key.
   */
  async list(options: { all?: boolean } = {}): Promise<SigningKeyInfo[]> {
    await this.#read();
    const now = this.#clock();
    let query = this.#db
      .selectFrom('signing_keys')
      .select(['kid', 'alg', 'state', 'created_at', 'activates_at', 'retired_at', 'publish_until'])
      .orderBy('activates_at', 'desc')
      .orderBy('created_at', 'desc')
      .orderBy('kid')
      .limit(MAX_LISTED_KEYS);
    if (options.all !== true) query = query.where(publishedAt(now));
    const rows = await query.execute();
    return rows.map((row) => ({
      kid: row.kid,
      alg: row.alg,
      state: row.state,
      createdAt: row.created_at,
      activatesAt: row.activates_at,
      retiredAt: row.retired_at ?? undefined,
      publishUntil: row.publish_until ?? undefined,
      published: isPublished(row.state, row.publish_until ?? undefined, now),
    }));
  }

  /** The ACTIVE and NEXT rows, locked (in kid order, so that concurrent lockers queue rather than deadlock). */
  async #lockCurrent(tx: Tx): Promise<CurrentKeys> {
    const rows = await tx
      .selectFrom('signing_keys')
      .select(['kid', 'state', 'activates_at'])
      .where('state', 'in', ['NEXT', 'ACTIVE'])
      .orderBy('kid')
      .forUpdate()
      .execute();
    const next = rows.find((r) => r.state === 'NEXT');
    const active = rows.find((r) => r.state === 'ACTIVE');
    return { active: active && { kid: active.kid }, next: next && { kid: next.kid, activates_at: next.activates_at } };
  }

  /**
   * Promotes the NEXT key if it is due, in its own transaction. Replicas may race here: the row
   * locks make the later one wait, and then it finds no NEXT key (the promoted row is ACTIVE now,
   * the old one RETIRED), so it does nothing.
   */
  async #promoteDue(): Promise<void> {
    const promoted = await this.#db.transaction().execute(async (tx) => {
      const now = this.#clock();
      const current = await this.#lockCurrent(tx);
      const { next } = current;
      if (!next || next.activates_at.getTime() > now.getTime()) return undefined;
      await this.#promoteIn(tx, { active: current.active, next }, now);
      return { kid: next.kid, retiredKid: current.active?.kid, at: now };
    });
    if (promoted) {
      this.#log.info(
        { kid: promoted.kid, retiredKid: promoted.retiredKid, publishUntil: new Date(promoted.at.getTime() + this.#retiredPublicationMs).toISOString() },
        'the next signing key is due: promoted it to ACTIVE and retired the old one',
      );
    }
  }

  /** NEXT → ACTIVE (activated now), and the old ACTIVE → RETIRED, on rows locked by #lockCurrent. */
  async #promoteIn(tx: Tx, keys: { active: CurrentKeys['active']; next: NonNullable<CurrentKeys['next']> }, now: Date): Promise<void> {
    if (keys.active) await this.#retire(tx, keys.active.kid, now);
    await tx.updateTable('signing_keys').set({ state: 'ACTIVE', activates_at: now }).where('kid', '=', keys.next.kid).execute();
  }

  async #retire(tx: Tx, kid: string, now: Date): Promise<void> {
    await tx
      .updateTable('signing_keys')
      .set({ state: 'RETIRED', retired_at: now, publish_until: new Date(now.getTime() + this.#retiredPublicationMs) })
      .where('kid', '=', kid)
      .execute();
  }

  #row(fresh: SigningKeyMaterial, state: 'NEXT' | 'ACTIVE', now: Date, activatesAt: Date) {
    return { ...fresh, state, created_at: now, activates_at: activatesAt, retired_at: null, publish_until: null };
  }

  #pending(next: NonNullable<CurrentKeys['next']>, now: Date): BrokerError {
    return new BrokerError(
      'failed-precondition',
      `signing key ${next.kid} is already waiting to become active, at ${next.activates_at.toISOString()} ` +
        `(in ${readableDuration(next.activates_at.getTime() - now.getTime())}): rotate again after that, ` +
        'or rotate with immediate (emergency: no pre-publication) if the active key is compromised',
    );
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

  /** Reads the published keys; a NEXT key that has come due is promoted first (then read again). */
  async #load(): Promise<Snapshot> {
    let now = this.#clock();
    let rows = await this.#publishedRows(now);
    const due = rows.find((r) => r.state === 'NEXT' && r.activates_at.getTime() <= now.getTime());
    if (due) {
      await this.#promoteDue();
      now = this.#clock();
      rows = await this.#publishedRows(now);
    }
    const previous = this.#snapshot;
    const keys = new Map<string, CachedKey>();
    let active: SigningKey | undefined;
    let next: Snapshot['next'];
    for (const row of rows) {
      const known = previous?.keys.get(row.kid);
      const key = known && known.alg === row.alg ? { ...known, state: row.state, publishUntil: row.publish_until ?? undefined } : await parsePublic(row);
      if (row.state === 'ACTIVE') {
        active = previous?.active?.kid === row.kid ? previous.active : privateKeyOf(row, key.alg, key.publicJwk, this.#kek);
      }
      if (row.state === 'NEXT') next = { kid: row.kid, activatesAt: row.activates_at };
      keys.set(row.kid, key);
    }
    const snapshot: Snapshot = { loadedAt: now.getTime(), active, next, keys };
    if (previous?.active?.kid !== active?.kid) {
      this.#log.info({ kid: active?.kid, previousKid: previous?.active?.kid }, 'active signing key loaded');
    }
    this.#snapshot = snapshot;
    return snapshot;
  }

  /** NEXT and ACTIVE keys and RETIRED keys still published at `now`: ACTIVE, NEXT, RETIRED, newest first within each. */
  #publishedRows(now: Date): Promise<SigningKeyRow[]> {
    return this.#db.selectFrom('signing_keys').selectAll().where(publishedAt(now)).orderBy('state').orderBy('created_at', 'desc').execute();
  }
}

/** Whether a key is in the key set at `now`: NEXT and ACTIVE keys, and RETIRED ones until publish_until. */
function isPublished(state: SigningKeyState, publishUntil: Date | undefined, now: Date): boolean {
  return state !== 'RETIRED' || (publishUntil !== undefined && publishUntil.getTime() > now.getTime());
}

/** isPublished as a WHERE condition on signing_keys. */
function publishedAt(now: Date) {
  return (eb: ExpressionBuilder<Schema, 'signing_keys'>) => eb.or([eb('state', 'in', ['NEXT', 'ACTIVE']), eb('publish_until', '>', now)]);
}

async function parsePublic(row: SigningKeyRow): Promise<CachedKey> {
  if (!isTokenAlg(row.alg)) throw new Error(`signing key ${row.kid} has unsupported alg ${row.alg}`);
  const { publicJwk, publicKey } = await publicKeyOf(row, row.alg);
  return { kid: row.kid, alg: row.alg, state: row.state, publishUntil: row.publish_until ?? undefined, publicJwk, publicKey };
}
