/**
 * IssueToken and VerifyToken. A token is signed before the round trip, from the task's immutable
 * facts and the policy at request time; the statement (tb_op_issue) then checks the task's state
 * on the locked row and stores the token with its audit event, or records the refusal. A
 * verification checks the signature here and revocation, state and binding in the statement
 * (tb_op_verify), after it locked the task's audit chain, so it never sees a task between the
 * steps of the transaction that ends it.
 */
import type { Actor, VerifyReason } from '../model/task.js';
import type { SigningKeyRing } from '../tokens/keyring.js';
import { actClaimOf, checkTaskToken, MAX_USES_LIMIT, signTaskToken, TOKEN_CONTRACT_VERSION, type TaskTokenClaims } from '../tokens/task-token.js';
import type { TaskAuthority } from './authority.js';
import { newTokenId } from './ids.js';
import type { LifecycleLimits } from './limits.js';
import { TaskAccess, type Denial } from './task-access.js';
import { invalid, presenterArgument, tokenArgument, tokenTtlArgument, validateScopes } from './validation.js';

export interface IssueRequest {
  scopes?: string[];
  ttlSeconds?: number;
  /** A use-limited token: VerifyToken accepts it at most this many times (1 to MAX_USES_LIMIT). */
  maxUses?: number;
  /** For a task whose rule binds follow-ups to its session. */
  subjectToken?: string;
}

export interface IssuedToken {
  token: string;
  tokenId: string;
  expiresAt: Date;
  scopes: string[];
}

export interface VerifyResult {
  valid: boolean;
  reason: VerifyReason;
  detail: string;
  claims?: TaskTokenClaims;
  bindingChecked: boolean;
  /** For a valid use-limited token: how many uses this one leaves. */
  usesLeft?: number;
}

export interface VerifyOptions {
  presenterThumbprint?: string;
  /** The presenter's certificate (DER), when the resource server sends it instead of its thumbprint. */
  presenterCertDer?: Uint8Array;
  expectedTaskHash?: string;
  skipBindingCheck?: boolean;
}

/** What issuing and verifying need of the key ring: the key to sign with and the keys to verify by kid. */
export type TokenKeys = Pick<SigningKeyRing, 'activeKey' | 'verificationKey'>;

export class TokenOperations {
  readonly #access: TaskAccess;
  readonly #authority: TaskAuthority;
  readonly #keys: TokenKeys;
  readonly #limits: LifecycleLimits;

  constructor(access: TaskAccess, authority: TaskAuthority, keys: TokenKeys, limits: LifecycleLimits) {
    this.#access = access;
    this.#authority = authority;
    this.#keys = keys;
    this.#limits = limits;
  }

  async issue(actor: Actor, taskId: string, request: IssueRequest = {}): Promise<IssuedToken> {
    const requestedScopes = request.scopes ?? [];
    if (requestedScopes.length > 0) validateScopes('scopes', requestedScopes);
    tokenTtlArgument(request.ttlSeconds);
    const maxUses = request.maxUses || undefined;
    if (maxUses !== undefined && (!Number.isInteger(maxUses) || maxUses < 1 || maxUses > MAX_USES_LIMIT)) {
      throw invalid(`max_uses: 0 (no limit) or 1 to ${MAX_USES_LIMIT}`);
    }
    const access = this.#access;
    const facts = await access.servedFacts(actor, taskId, 'IssueToken');
    const key = await this.#keys.activeKey();
    const refuse = (kind: Denial['kind'], message: string, details: Record<string, unknown> = {}): Denial => ({
      kind,
      message,
      details: { operation: 'IssueToken', reason: message, ...details },
    });

    // What the broker can decide before the round trip; the statement checks the state and records whichever refusal applies.
    let deny: Denial | undefined;
    const extra = requestedScopes.filter((s) => !facts.scopes.includes(s));
    if (extra.length > 0) deny = refuse('permission-denied', `scopes not granted to the task: ${extra.join(' ')}`, { requested_scopes: requestedScopes });
    const scopes = requestedScopes.length > 0 ? requestedScopes : facts.scopes;
    const decision = await this.#authority.decideTask(facts, { scopes, taskTtlSeconds: facts.depth === 0 ? facts.ttlSeconds : undefined });
    if (!deny && !decision.allowed) deny = TaskAccess.policyDenial('IssueToken', decision, { scopes });
    await this.#authority.checkSession(actor, facts, decision, request.subjectToken, 'IssueToken');

    const now = access.now();
    const nowSec = Math.floor(now.getTime() / 1000);
    const wanted = Math.min(
      request.ttlSeconds ?? this.#limits.defaultTokenTtlSeconds,
      this.#limits.maxTokenTtlSeconds,
      (decision.allowed && decision.maxTokenTtlSeconds) || Infinity,
    );
    const exp = Math.min(nowSec + wanted, Math.floor(facts.expiresAt.getTime() / 1000));
    if (!deny && exp <= nowSec) deny = refuse('failed-precondition', 'task expires in less than a second: no token can be issued');

    const op: Record<string, unknown> = { op: 'issue', task_id: taskId, ...access.who(actor, now) };
    let issued: IssuedToken | undefined;
    if (deny) {
      op.deny = deny;
    } else if (decision.allowed) {
      // The rule may now ask for an approval this task never had (checked on the locked row).
      if (decision.requireApproval) {
        op.approval = true;
        const which = facts.depth === 0 ? 'the task was not approved' : `its root task ${facts.rootTaskId} was not approved`;
        op.approval_denial = { reason: `rule "${decision.rule}" now requires approval and ${which}`, digest: decision.policyDigest };
      }
      const jti = newTokenId();
      const claims: TaskTokenClaims = {
        iss: access.issuer,
        sub: facts.ownerSpiffeId,
        aud: facts.audience,
        iat: nowSec,
        nbf: nowSec,
        exp,
        jti,
        task_id: taskId,
        task_hash: facts.taskHash,
        scope: scopes.join(' '),
        cnf: { 'x5t#S256': actor.certThumbprint },
        ver: TOKEN_CONTRACT_VERSION,
      };
      // A gateway issuing for the requester's task acts for its owner (RFC 8693): it is the outermost actor.
      const viaGateway = facts.gateway !== null && actor.spiffeId === facts.gateway && facts.gateway !== facts.ownerSpiffeId;
      const act = actClaimOf(viaGateway ? [facts.gateway!, ...facts.delegators] : facts.delegators);
      if (act) claims.act = act;
      if (facts.parentTaskId) claims.parent_task_id = facts.parentTaskId;
      if (facts.principal) claims.principal = { ...facts.principal };
      if (maxUses !== undefined) claims.max_uses = maxUses;
      const expiresAt = new Date(exp * 1000);
      issued = { token: await signTaskToken(key, claims), tokenId: jti, expiresAt, scopes };
      op.token = {
        jti,
        kid: key.kid,
        scopes,
        issued_at: new Date(nowSec * 1000).toISOString(),
        expires_at: expiresAt.toISOString(),
        max_uses: maxUses ?? null,
      };
      op.details = {
        token_id: jti,
        kid: key.kid,
        scopes,
        audience: claims.aud,
        expires_at: expiresAt.toISOString(),
        cnf_x5t_s256: actor.certThumbprint,
        policy_rule: decision.rule,
        policy_digest: decision.policyDigest,
        ...(maxUses !== undefined ? { max_uses: maxUses } : {}),
        ...(facts.depth > 0 ? { parent_task_id: facts.parentTaskId, delegators: facts.delegators } : {}),
      };
    }
    const result = await access.applyOn(facts, op);
    if (result.refused || !issued) return access.refused(actor, taskId, 'IssueToken', result);
    return issued;
  }

  /**
   * Verifies a token for a resource server, which must be the token's audience. Outcomes are
   * answers, not errors; each is audited (on the task's chain when the token is authentic).
   */
  async verify(actor: Actor, token: string, options: VerifyOptions = {}): Promise<VerifyResult> {
    tokenArgument(token);
    const presenter = presenterArgument(options);
    const access = this.#access;
    const now = access.now();
    const check = await checkTaskToken(token, this.#keys, { issuer: access.issuer, now });
    const bindingChecked = presenter !== undefined;
    // Tokens are certificate-bound (RFC 8705): without the presenter's certificate the answer
    // cannot be "valid", unless the resource server opted out on the record.
    const bearerOnly = !bindingChecked && options.skipBindingCheck === true;

    if (!check.ok && check.reason !== 'expired') {
      // Not authentic: nothing in it can be trusted, not even which task it names.
      await access.recordOnActorChain(
        actor,
        'token.verified',
        { result: check.reason, detail: check.detail, token_id: null, binding_checked: bindingChecked, ...(bearerOnly ? { binding_check_skipped: true } : {}) },
        now,
      );
      return { valid: false, reason: check.reason, detail: check.detail, bindingChecked };
    }
    const claims: Partial<TaskTokenClaims> | undefined = check.claims;
    const taskId = typeof claims?.task_id === 'string' ? claims.task_id : null;
    const result = await access.apply(taskId ?? `actor:${actor.spiffeId}`, {
      op: 'verify',
      task_id: taskId,
      jti: claims?.jti ?? null,
      expired: check.ok ? null : check.detail,
      aud: claims?.aud ?? null,
      sub: claims?.sub ?? null,
      task_hash: claims?.task_hash ?? null,
      cnf: claims?.cnf?.['x5t#S256'] ?? null,
      expected_hash: options.expectedTaskHash,
      presenter,
      bearer: bearerOnly,
      ...access.who(actor, now),
    });
    const reason = result.reason ?? 'revoked';
    return {
      valid: reason === 'valid',
      reason,
      detail: result.detail ?? '',
      bindingChecked,
      ...(reason === 'valid' && check.ok ? { claims: check.claims } : {}),
      ...(reason === 'valid' && typeof result.uses_left === 'number' ? { usesLeft: result.uses_left } : {}),
    };
  }
}
