/**
 * createTaskTokenVerifier: task tokens verified in-process, at the speed of the signature check.
 *
 * The offline checks are the broker's own (checkTaskTokenWithKey: compact JWS, typ task+jwt, an
 * alg the key is for, signature, iss, exp/nbf with leeway) plus what a resource server must add:
 * aud is its own SPIFFE ID, cnf x5t#S256 is the presenter's certificate (mandatory), task_hash
 * when expected, and revocation (a stream-fed set, the broker online, or nothing). The hot path
 * (verifySync) is synchronous; verify() adds what needs the broker: a key refresh on an unknown
 * kid, and VerifyToken where the revocation mode or stale data asks for it. Never silently open:
 * stale revocation data without an online fallback is REVOCATION_STATUS_UNKNOWN, not VALID.
 *
 * A use-limited token (a max_uses claim) is never accepted offline, whatever the revocation
 * mode: only the broker counts its uses, so verify() asks VerifyToken (USES_EXHAUSTED once they
 * are spent) and refuses (REVOCATION_STATUS_UNKNOWN) when the broker cannot be asked; verifySync
 * refuses it, saying to use verify(). Tokens of a newer contract than this code knows (ver > 2)
 * are MALFORMED: the claims it does not understand may limit the token.
 */
import { ACTION_NAME } from '../model/task.js';
import { VERIFIER_KEY_MAX_AGE_MS } from '../tokens/key-publication.js';
import { actorsOf, checkTaskTokenWithKey, readTaskTokenHeader, type TaskTokenClaims } from '../tokens/task-token.js';
import { systemClock } from './clock.js';
import { SigningKeySet } from './keys.js';
import { presenterThumbprint } from './presenter.js';
import { UseReporter } from './reporter.js';
import { RevocationWatcher } from './revocations.js';
import {
  VERIFIER_REASONS,
  type VerificationResult,
  type VerifierBroker,
  type VerifierClock,
  type VerifierLogger,
  type VerifierOptions,
  type VerifierReason,
  type VerifierStats,
  type VerifyOptions,
} from './types.js';

const REASON_PREFIX = 'VERIFY_TOKEN_REASON_';
const CLOSE_FLUSH_TIMEOUT_MS = 5_000;
const USE_LIMITED = 'a use-limited token (max_uses) is accepted only by the broker, which counts its uses';
const NO_ACTORS: readonly string[] = Object.freeze([]);
const silent: VerifierLogger = () => undefined;

/** An offline outcome, or what it still needs from the broker. */
type Offline =
  | { result: VerificationResult; authentic: boolean; thumbprint?: string | undefined; needs?: undefined }
  | { needs: 'key'; result: VerificationResult }
  | { needs: 'online'; result: VerificationResult; thumbprint: string; claims: TaskTokenClaims };

export function createTaskTokenVerifier(options: VerifierOptions): TaskTokenVerifier {
  return new TaskTokenVerifier(options);
}

export class TaskTokenVerifier {
  readonly #broker: VerifierBroker;
  readonly #clock: VerifierClock;
  readonly #logger: VerifierLogger;
  readonly #mode: VerifierOptions['revocations'];
  readonly #toleranceSeconds: number;
  readonly #maxStalenessMs: number;
  readonly #onStale: 'fail-closed' | 'online';
  readonly #keys: SigningKeySet;
  readonly #watcher: RevocationWatcher | undefined;
  readonly #reporter: UseReporter | undefined;
  readonly #counts = Object.fromEntries(VERIFIER_REASONS.map((reason) => [reason, 0])) as Record<VerifierReason, number>;
  #stale = 0;
  #audience: string | undefined;
  /** Keys and audience: what verification cannot do without. */
  #base: Promise<void>;
  #baseDone = false;
  readonly #ready: Promise<void>;
  #closed = false;

  constructor(options: VerifierOptions) {
    if (!['stream', 'online', 'none'].includes(options.revocations))
      throw new TypeError("createTaskTokenVerifier: revocations must be 'stream', 'online' or 'none'");
    const tolerance = options.clockToleranceSeconds ?? 5;
    if (!(tolerance >= 0 && tolerance <= 60)) throw new RangeError('createTaskTokenVerifier: clockToleranceSeconds must be between 0 and 60');
    this.#broker = options.broker;
    this.#clock = options.clock ?? systemClock;
    this.#logger = options.logger ?? silent;
    this.#mode = options.revocations;
    this.#toleranceSeconds = tolerance;
    const maxStalenessMs = options.maxStalenessMs ?? 30_000;
    // NaN would make every age look fresh: the bound must be a real, positive number.
    if (!(Number.isFinite(maxStalenessMs) && maxStalenessMs > 0))
      throw new RangeError('createTaskTokenVerifier: maxStalenessMs must be a positive number of milliseconds');
    this.#maxStalenessMs = maxStalenessMs;
    const keyMaxAgeMs = options.keyMaxAgeMs ?? VERIFIER_KEY_MAX_AGE_MS;
    if (!(Number.isFinite(keyMaxAgeMs) && keyMaxAgeMs > 0))
      throw new RangeError('createTaskTokenVerifier: keyMaxAgeMs must be a positive number of milliseconds');
    this.#onStale = options.onStale ?? 'fail-closed';
    this.#audience = options.audience;
    const jwks = options.jwks === undefined || options.jwks === 'broker' ? 'broker' : new URL(options.jwks);
    this.#keys = new SigningKeySet({
      broker: this.#broker,
      jwks,
      issuer: options.issuer,
      minRefreshIntervalMs: options.keyRefreshMinIntervalMs ?? 10_000,
      maxAgeMs: keyMaxAgeMs,
      clock: this.#clock,
      logger: this.#logger,
    });
    if (options.reporting !== false) {
      const reporting = options.reporting ?? {};
      this.#reporter = new UseReporter({
        broker: this.#broker,
        clock: this.#clock,
        logger: this.#logger,
        flushIntervalMs: reporting.flushIntervalMs ?? 1000,
        maxBatch: reporting.maxBatch ?? 256,
        maxBuffered: reporting.maxBuffered ?? 10_000,
        retryInitialMs: reporting.retryInitialMs ?? 1000,
        retryMaxMs: reporting.retryMaxMs ?? 30_000,
      });
    }
    if (this.#mode === 'stream') {
      this.#watcher = new RevocationWatcher({
        broker: this.#broker,
        clock: this.#clock,
        logger: this.#logger,
        reconnectInitialMs: options.reconnectInitialMs ?? 250,
        reconnectMaxMs: options.reconnectMaxMs ?? 10_000,
        graceMs: tolerance * 1000,
      });
      this.#watcher.start();
    }
    this.#base = this.#loadBase(true);
    this.#base.catch(() => undefined);
    this.#ready = this.#base.then(() => this.#watcher?.ready());
    this.#ready.catch(() => undefined);
  }

  /** Resolves when the keys and the audience are known and, with revocations 'stream', the first stream message has arrived. */
  ready(): Promise<void> {
    return this.#ready;
  }

  /**
   * Verifies without waiting on anything: what needs the broker (an unknown kid, an online
   * confirmation, any use-limited token) is refused here (BAD_SIGNATURE; REVOCATION_STATUS_UNKNOWN,
   * the detail saying to use verify()), a key refresh started in the background. Use verify()
   * unless a synchronous answer matters more.
   */
  verifySync(token: string, options: VerifyOptions = {}): VerificationResult {
    const now = this.#clock.now();
    this.#keys.refreshIfOld();
    const outcome = this.#offline(token, options, now);
    if (outcome.needs === 'key') {
      this.#keys.refresh().catch((error: Error) => this.#logger('warn', 'verifier: key refresh failed', { error: error.message }));
      return this.#count(outcome.result);
    }
    if (outcome.needs === 'online') {
      const detail = `${outcome.result.detail}; verifySync cannot ask the broker: use verify()`;
      return this.#count({ valid: false, reason: 'REVOCATION_STATUS_UNKNOWN', detail, claims: outcome.claims });
    }
    return this.#finish(outcome, options, now);
  }

  /** Verifies a token; rejects only when the verifier cannot work at all (no keys or audience from the broker). */
  async verify(token: string, options: VerifyOptions = {}): Promise<VerificationResult> {
    if (!this.#baseDone) await this.#ensureBase();
    const now = this.#clock.now();
    this.#keys.refreshIfOld();
    let outcome = this.#offline(token, options, now);
    if (outcome.needs === 'key') {
      try {
        await this.#keys.refresh();
      } catch (error) {
        this.#logger('warn', 'verifier: key refresh failed', { error: (error as Error).message });
      }
      outcome = this.#offline(token, options, now, false);
      if (outcome.needs === 'key') return this.#count(outcome.result);
    }
    if (outcome.needs === 'online') return this.#count(await this.#online(token, outcome, options));
    return this.#finish(outcome, options, now);
  }

  /**
   * Calls `listener` with the task ID of each revocation the stream delivers, once it is in the
   * set (so verify() already refuses that task's tokens): e.g. to end sessions a token opened.
   * Only with revocations 'stream'. Returns the unsubscribe function.
   */
  onRevoked(listener: (taskId: string) => void): () => void {
    if (!this.#watcher) throw new Error("onRevoked needs revocations: 'stream'");
    return this.#watcher.onRevoked(listener);
  }

  /** Sends the queued access reports now; resolves when that flush is over (a failure is retried later, not thrown). */
  flush(): Promise<void> {
    return this.#reporter?.flush() ?? Promise.resolve();
  }

  stats(): VerifierStats {
    const now = this.#clock.now();
    return {
      verified: { ...this.#counts },
      reports: this.#reporter?.stats ?? { sent: 0, buffered: 0, dropped: 0, failedFlushes: 0 },
      keyRefreshes: this.#keys.refreshes,
      streamReconnects: this.#watcher?.reconnects ?? 0,
      stale: this.#stale,
      revocationsStale: this.#watcher !== undefined && this.#watcher.ageMs(now) > this.#maxStalenessMs,
    };
  }

  /** Stops the stream and the timers, and flushes the queued reports once (waiting at most 5 s). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher?.close();
    await this.#reporter?.close(CLOSE_FLUSH_TIMEOUT_MS);
  }

  async #loadBase(first: boolean): Promise<void> {
    const audience = this.#audience === undefined ? this.#broker.whoAmI().then((me) => me.spiffeId) : this.#audience;
    const [, spiffeId] = await Promise.all([this.#keys.refresh(first), audience]);
    if (!spiffeId) throw new Error('verifier: the broker reported no SPIFFE ID for this workload (give options.audience)');
    this.#audience = spiffeId;
    this.#baseDone = true;
  }

  /** The base, retried (at the key refresh rate) after a failed load. */
  async #ensureBase(): Promise<void> {
    try {
      await this.#base;
    } catch (error) {
      if (!this.#keys.mayRefresh()) throw new Error(`verifier not ready: ${(error as Error).message}`, { cause: error });
      this.#base = this.#loadBase(false);
      await this.#base;
    }
  }

  #offline(token: string, options: VerifyOptions, now: number, mayRefresh = true): Offline {
    const header = readTaskTokenHeader(token);
    if (typeof header === 'string') return { result: refusal('MALFORMED', header), authentic: false };
    const key = this.#keys.key(header.kid);
    const issuer = this.#keys.issuer;
    if (!key || issuer === undefined) {
      const result = refusal(
        'BAD_SIGNATURE',
        issuer === undefined ? 'signing keys not loaded yet' : `unknown signing key ${JSON.stringify(header.kid.slice(0, 64))}`,
      );
      if (mayRefresh && this.#keys.mayRefresh()) return { needs: 'key', result };
      return { result, authentic: false };
    }
    const check = checkTaskTokenWithKey(token, header, key, { issuer, now: new Date(now), clockToleranceSeconds: this.#toleranceSeconds });
    if (!check.ok) {
      const reason = check.reason === 'malformed' ? 'MALFORMED' : check.reason === 'expired' ? 'EXPIRED' : 'BAD_SIGNATURE';
      const claims = check.claims as TaskTokenClaims | undefined;
      const authentic = claims !== undefined && typeof claims.jti === 'string' && typeof claims.task_id === 'string';
      const result: VerificationResult = authentic ? { valid: false, reason, detail: check.detail, claims } : refusal(reason, check.detail);
      return { result, authentic, thumbprint: thumbprintOf(options) };
    }
    const claims = check.claims;
    const refuse = (reason: VerifierReason, detail: string, thumbprint?: string): Offline => ({
      result: { valid: false, reason, detail, claims },
      authentic: true,
      thumbprint,
    });
    if (claims.aud !== this.#audience) return refuse('AUDIENCE_MISMATCH', 'the token is for another audience', thumbprintOf(options));
    const presenter = presenterThumbprint(options.presenterCertificate);
    if ('problem' in presenter) {
      return presenter.problem === 'missing'
        ? refuse('PRESENTER_REQUIRED', 'no presenter certificate: a certificate-bound token proves nothing without it')
        : refuse('BINDING_MISMATCH', presenter.problem);
    }
    const { thumbprint } = presenter;
    if (claims.cnf['x5t#S256'] !== thumbprint) return refuse('BINDING_MISMATCH', 'the token is bound to another certificate', thumbprint);
    if (options.expectedTaskHash !== undefined && claims.task_hash !== options.expectedTaskHash) {
      return refuse('TASK_HASH_MISMATCH', 'the task hash is not the expected one', thumbprint);
    }
    // Offline, a use cannot be counted: whatever the mode, only VerifyToken may accept it.
    if (claims.max_uses !== undefined) return { needs: 'online', result: refusal('REVOCATION_STATUS_UNKNOWN', USE_LIMITED), thumbprint, claims };
    if (this.#mode === 'none')
      return { result: { valid: true, reason: 'VALID', detail: 'valid (revocation not checked)', claims }, authentic: true, thumbprint };
    if (this.#mode === 'online')
      return { needs: 'online', result: refusal('REVOCATION_STATUS_UNKNOWN', 'confirmation by the broker required'), thumbprint, claims };
    const watcher = this.#watcher as RevocationWatcher;
    const age = watcher.ageMs(now);
    if (age > this.#maxStalenessMs) {
      this.#stale += 1;
      const detail =
        age === Number.POSITIVE_INFINITY ? 'no revocation data yet' : `revocation data is ${Math.round(age)} ms old (bound ${this.#maxStalenessMs} ms)`;
      if (this.#onStale === 'online') return { needs: 'online', result: refusal('REVOCATION_STATUS_UNKNOWN', detail), thumbprint, claims };
      // Refused, and reported like any other outcome of an authentic token: a stale verifier's refusals are evidence too.
      return refuse('REVOCATION_STATUS_UNKNOWN', detail, thumbprint);
    }
    if (watcher.isRevoked(claims.task_id, now)) return refuse('REVOKED', "the token's task was revoked", thumbprint);
    return { result: { valid: true, reason: 'VALID', detail: 'valid', claims }, authentic: true, thumbprint };
  }

  /** VerifyToken decides (the broker records that verification itself, so no access report). A failed call is REVOCATION_STATUS_UNKNOWN. */
  async #online(token: string, outcome: Extract<Offline, { needs: 'online' }>, options: VerifyOptions): Promise<VerificationResult> {
    try {
      const answer = await this.#broker.verifyToken({
        token,
        presenterCertThumbprint: outcome.thumbprint,
        ...(options.expectedTaskHash === undefined ? {} : { expectedTaskHash: options.expectedTaskHash }),
      });
      const name = String(answer.reason).startsWith(REASON_PREFIX) ? String(answer.reason).slice(REASON_PREFIX.length) : String(answer.reason);
      const reason = (VERIFIER_REASONS as readonly string[]).includes(name) ? (name as VerifierReason) : 'MALFORMED';
      const valid = answer.valid && reason === 'VALID';
      const result: VerificationResult = {
        valid,
        reason: valid ? 'VALID' : reason === 'VALID' ? 'REVOCATION_STATUS_UNKNOWN' : reason,
        detail: answer.detail || reason,
        claims: outcome.claims,
      };
      if (valid && outcome.claims.max_uses !== undefined && answer.claims) result.usesLeft = answer.claims.usesLeft;
      return result;
    } catch (error) {
      this.#logger('warn', 'verifier: VerifyToken failed; refusing', { error: (error as Error).message });
      const detail = `${outcome.result.detail}, and the broker could not be asked: ${(error as Error).message}`;
      return { valid: false, reason: 'REVOCATION_STATUS_UNKNOWN', detail, claims: outcome.claims };
    }
  }

  #finish(outcome: Extract<Offline, { needs?: undefined }>, options: VerifyOptions, now: number): VerificationResult {
    const { result } = outcome;
    if (outcome.authentic && this.#reporter && result.claims) {
      const operation = options.operation ?? 'verify';
      if (!ACTION_NAME.test(operation))
        throw new TypeError(
          `verify: operation must be 1 to 128 of letters, digits and . _ : / -, starting with a letter or digit, got ${JSON.stringify(operation)}`,
        );
      this.#reporter.add(
        {
          tokenId: result.claims.jti,
          taskId: result.claims.task_id,
          outcome: REASON_PREFIX + result.reason,
          operation,
          presenterThumbprint: outcome.thumbprint,
        },
        now,
      );
    }
    return this.#count(result);
  }

  /** Every answer leaves through here: counted, and with the claims of token contract v2 spelled out. */
  #count(result: VerificationResult): VerificationResult {
    this.#counts[result.reason] += 1;
    const claims = result.claims;
    if (claims) {
      result.actors = claims.act ? actorsOf(claims.act) : NO_ACTORS;
      if (claims.parent_task_id !== undefined) result.parentTaskId = claims.parent_task_id;
      if (claims.principal !== undefined) result.principal = claims.principal;
      if (claims.max_uses !== undefined) result.maxUses = claims.max_uses;
    }
    return result;
  }
}

function refusal(reason: VerifierReason, detail: string): VerificationResult {
  return { valid: false, reason, detail };
}

/** The presenter's thumbprint for a report, when there is a usable one. */
function thumbprintOf(options: VerifyOptions): string | undefined {
  const presenter = presenterThumbprint(options.presenterCertificate);
  return 'thumbprint' in presenter ? presenter.thumbprint : undefined;
}
