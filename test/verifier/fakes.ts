/**
 * Test doubles for the verifier SDK: a broker implementing VerifierBroker (keys from real
 * signing keys, a real event-emitting revocation stream, recorded reports, a scripted
 * VerifyToken) and a manual clock whose timers run when the test advances it.
 */
import { EventEmitter, once } from 'node:events';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import type { GetSigningKeysResponse__Output } from '../../src/gen/taskbroker/v1/GetSigningKeysResponse.js';
import type { ReportTokenUseResponse__Output } from '../../src/gen/taskbroker/v1/ReportTokenUseResponse.js';
import type { TokenUse } from '../../src/gen/taskbroker/v1/TokenUse.js';
import type { VerifyTokenRequest } from '../../src/gen/taskbroker/v1/VerifyTokenRequest.js';
import type { VerifyTokenResponse__Output } from '../../src/gen/taskbroker/v1/VerifyTokenResponse.js';
import type { WatchRevocationsResponse__Output } from '../../src/gen/taskbroker/v1/WatchRevocationsResponse.js';
import type { WhoAmIResponse__Output } from '../../src/gen/taskbroker/v1/WhoAmIResponse.js';
import type { SigningKey, TokenAlg } from '../../src/tokens/keyring.js';
import { signTaskToken, type TaskTokenClaims } from '../../src/tokens/task-token.js';
import type { VerifierBroker, VerifierClock } from '../../src/verifier/index.js';
import { taskTokenClaims, TOKEN_ISSUER } from '../helpers/task-token.js';

export const AUDIENCE = 'spiffe://a.test/target';

/** A signing key as the broker's key ring holds one (KeyObjects, public JWK with kid, alg, use). */
export function signingKey(alg: TokenAlg = 'ES256'): SigningKey {
  const { privateKey, publicKey } = alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
  const kid = randomBytes(16).toString('base64url');
  return { kid, alg, privateKey, publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' } };
}

/** A task token signed by the broker's signer, aud AUDIENCE, bound to `thumbprint`. */
export function token(key: SigningKey, now: number, thumbprint: string, overrides: Partial<TaskTokenClaims> = {}): Promise<string> {
  return signTaskToken(key, taskTokenClaims(new Date(now), { aud: AUDIENCE, cnf: { 'x5t#S256': thumbprint }, ...overrides }));
}

export class FakeStream extends EventEmitter {
  cancelled = false;
  constructor(readonly cursor: string) {
    super();
  }
  cancel(): void {
    this.cancelled = true;
  }
  send(message: Partial<WatchRevocationsResponse__Output>): void {
    // Each message completes the stream's start unless it says otherwise (a start in several pages).
    this.emit('data', { snapshot: false, revocations: [], cursor: '', asOf: null, heartbeatInterval: null, startComplete: true, ...message });
  }
}

export function revocation(taskId: string, expiresByMs: number): WatchRevocationsResponse__Output['revocations'][number] {
  const seconds = Math.floor(expiresByMs / 1000);
  return {
    taskId,
    taskState: 'TASK_STATE_CANCELLED',
    reason: 'test',
    revokedAt: null,
    revokedTokens: 1,
    tokensExpireBy: { seconds: String(seconds), nanos: (expiresByMs - seconds * 1000) * 1e6 },
  };
}

export class FakeBroker extends EventEmitter implements VerifierBroker {
  keys: SigningKey[];
  keyFetches = 0;
  /** When set, getSigningKeys waits for it. */
  keyGate: Promise<void> | undefined;
  streams: FakeStream[] = [];
  reportCalls: TokenUse[][] = [];
  /** How many of the next reportTokenUse calls fail. */
  failReports = 0;
  /** The gRPC status code those failures carry (14: UNAVAILABLE). */
  failReportsCode = 14;
  verifyCalls: VerifyTokenRequest[] = [];
  verifyAnswer: Partial<VerifyTokenResponse__Output> = { valid: true, reason: 'VERIFY_TOKEN_REASON_VALID', detail: 'valid' };

  constructor(keys: SigningKey[] = [signingKey()]) {
    super();
    this.keys = keys;
  }

  async getSigningKeys(): Promise<GetSigningKeysResponse__Output> {
    this.keyFetches += 1;
    if (this.keyGate) await this.keyGate;
    return { jwksJson: JSON.stringify({ keys: this.keys.map((k) => k.publicJwk) }), issuer: TOKEN_ISSUER, alg: this.keys[0]?.alg ?? 'ES256' };
  }

  watchRevocations(afterCursor: string): FakeStream {
    const stream = new FakeStream(afterCursor);
    this.streams.push(stream);
    queueMicrotask(() => this.emit('watch', stream));
    return stream;
  }

  reportTokenUse(uses: TokenUse[]): Promise<ReportTokenUseResponse__Output> {
    this.reportCalls.push(uses);
    const fail = this.failReports > 0;
    if (fail) this.failReports -= 1;
    queueMicrotask(() => this.emit('report', uses, fail));
    const error = Object.assign(new Error(this.failReportsCode === 3 ? 'INVALID_ARGUMENT: uses[0].operation' : 'UNAVAILABLE: broker down'), {
      code: this.failReportsCode,
    });
    return fail ? Promise.reject(error) : Promise.resolve({ recorded: uses.length, duplicates: 0, rejected: 0 });
  }

  verifyToken(request: VerifyTokenRequest): Promise<VerifyTokenResponse__Output> {
    this.verifyCalls.push(request);
    return Promise.resolve({ valid: false, reason: 'VERIFY_TOKEN_REASON_UNSPECIFIED', detail: '', claims: null, bindingChecked: true, ...this.verifyAnswer });
  }

  whoAmI(): Promise<WhoAmIResponse__Output> {
    return Promise.resolve({ spiffeId: AUDIENCE, trustDomain: 'a.test', certThumbprint: '', validUntil: null });
  }

  /** The next stream opened (or the latest, if one is open and not yet awaited). */
  async nextStream(): Promise<FakeStream> {
    const [stream] = (await once(this, 'watch')) as [FakeStream];
    return stream;
  }

  async nextReport(): Promise<{ uses: TokenUse[]; failed: boolean }> {
    const [uses, failed] = (await once(this, 'report')) as [TokenUse[], boolean];
    return { uses, failed };
  }
}

interface Timer {
  at: number;
  fn: () => void;
  id: number;
}

/** Time stands still until advance(); due timers then run in order. */
export class ManualClock implements VerifierClock {
  #now: number;
  #timers: Timer[] = [];
  #ids = 0;
  constructor(start = Date.UTC(2030, 0, 1)) {
    this.#now = start;
  }
  now(): number {
    return this.#now;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const timer = { at: this.#now + ms, fn, id: ++this.#ids };
    this.#timers.push(timer);
    return timer.id;
  }
  clearTimeout(handle: unknown): void {
    this.#timers = this.#timers.filter((t) => t.id !== handle);
  }
  get pending(): number {
    return this.#timers.length;
  }
  /** The delay until the next timer, or undefined. */
  nextDelay(): number | undefined {
    const next = Math.min(...this.#timers.map((t) => t.at));
    return Number.isFinite(next) ? next - this.#now : undefined;
  }
  advance(ms: number): void {
    const until = this.#now + ms;
    for (;;) {
      const due = this.#timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#timers = this.#timers.filter((t) => t !== due);
      this.#now = Math.max(this.#now, due.at);
      due.fn();
    }
    this.#now = until;
  }
}
