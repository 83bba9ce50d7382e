/**
 * Who may do what with a task, decided at request time: the policy's rule for the task (for a
 * delegated task, the rule that allows its root, and that rule's delegation block for every hop
 * down to it), the principal behind the task, and its session when the rule binds follow-ups to it.
 *
 * Apart from TaskAccess (the round trip, the facts, the not-found path) because this is the part
 * that reads the policy and the subject tokens, and nothing here touches the database except
 * through cached facts.
 */
import type { Actor, Principal } from '../model/task.js';
import type { Policy, PolicyDecision } from '../policy/policy.js';
import type { SubjectTokenFailure, SubjectTokenVerifier, VerifiedSubject } from '../policy/subject-tokens.js';
import { SpiffeId } from '../spiffe/id.js';
import type { TaskAccess, TaskFacts } from './task-access.js';

export class TaskAuthority {
  readonly #access: TaskAccess;
  readonly #subjects: SubjectTokenVerifier;

  constructor(access: TaskAccess, subjects: SubjectTokenVerifier) {
    this.#access = access;
    this.#subjects = subjects;
  }

  /**
   * The policy's decision on a request about an existing task. A root task: the rule for its
   * owner, action, audience and `scopes`. A delegated task: the rule for its root (decided for the
   * root's owner, as if it asked now), then that rule's delegation block for each hop from the
   * root down to this task; the first hop refused is the answer.
   */
  async decideTask(facts: TaskFacts, request: { scopes: readonly string[]; taskTtlSeconds?: number }): Promise<PolicyDecision> {
    const policy = this.#access.policy();
    if (!policy) return { allowed: false, reason: 'no policy is loaded: every request is denied', policyDigest: '' };
    const principal = principalRequest(facts);
    if (facts.depth === 0) {
      return policy.decide({
        caller: SpiffeId.parse(facts.ownerSpiffeId),
        action: facts.action,
        audience: facts.audience,
        scopes: request.scopes,
        taskTtlSeconds: request.taskTtlSeconds,
        principal,
        ...(facts.gateway ? { gateway: SpiffeId.parse(facts.gateway) } : {}),
      });
    }
    const chain = await this.#chain(facts);
    const root = chain[0]!;
    const decision = policy.decide({
      caller: SpiffeId.parse(root.ownerSpiffeId),
      action: root.action,
      audience: root.audience,
      scopes: root.scopes,
      principal,
      ...(root.gateway ? { gateway: SpiffeId.parse(root.gateway) } : {}),
    });
    if (!decision.allowed) return { ...decision, reason: `the root task's rule: ${decision.reason}` };
    const refused = delegationRefusal(policy, decision.rule, chain);
    if (refused) return { allowed: false, reason: refused, policyDigest: decision.policyDigest };
    // The request's own scopes are within the task's (checked by the caller); the hop checks covered the task's.
    return decision;
  }

  /**
   * Whether a hop from `parent` to a new child may be delegated, given the parent's own decision
   * (decideTask: its chain included): the rule's delegation block for the new hop.
   */
  decideDelegation(
    parent: TaskFacts,
    parentDecision: PolicyDecision & { allowed: true },
    child: { delegatee: SpiffeId; scopes: readonly string[]; audience: string },
  ): PolicyDecision {
    const policy = this.#access.policy();
    if (!policy) return { allowed: false, reason: 'no policy is loaded: every request is denied', policyDigest: '' };
    const hop = policy.delegationDecision({
      rule: parentDecision.rule,
      delegatee: child.delegatee,
      depth: parent.depth + 1,
      scopes: child.scopes,
      audience: child.audience,
      parentAudience: parent.audience,
    });
    if (!hop.allowed) return { allowed: false, reason: hop.reason, policyDigest: hop.policyDigest };
    return parentDecision;
  }

  /** Verifies a subject token against the policy's subject issuers; a failure is the BrokerError the caller gets. */
  async verifySubject(token: string): Promise<VerifiedSubject | SubjectTokenFailure> {
    const policy = this.#access.policy();
    if (!policy) return { ok: false, kind: 'permission-denied', reason: 'no policy is loaded: no subject token issuer is trusted' };
    if (policy.subjectIssuers.length === 0)
      return { ok: false, kind: 'permission-denied', reason: 'the policy names no subject_issuers: no subject token is accepted' };
    return this.#subjects.verify(token, policy.subjectIssuers);
  }

  /**
   * For a rule that binds follow-ups to the task's session: the request must carry a subject
   * token of the task's principal (same iss, sub and sid). Anything else is answered like a
   * stranger's request (NOT_FOUND), with the reason on the record.
   */
  async checkSession(actor: Actor, facts: TaskFacts, decision: PolicyDecision, subjectToken: string | undefined, operation: string): Promise<void> {
    if (!decision.allowed || !decision.bindSession || !facts.principal) return;
    // The gateway's own calls on a task it serves (its work's tokens, its completion) act for no
    // requester; what it asks for a requester names the requester, whose session is checked then.
    if (facts.gateway !== null && actor.spiffeId === facts.gateway) return;
    const why = await this.#sessionMismatch(facts.principal, subjectToken);
    if (why) await this.#access.notFound(actor, facts.taskId, operation, true, why);
  }

  async #sessionMismatch(principal: Principal, subjectToken: string | undefined): Promise<string | undefined> {
    if (!subjectToken) return 'the task is bound to a session and no subject_token was given';
    const verified = await this.verifySubject(subjectToken);
    if (!verified.ok) return `the task is bound to a session and the subject_token was refused: ${verified.reason}`;
    const p = verified.principal;
    if (p.iss !== principal.iss || p.sub !== principal.sub) return "the subject_token names another principal than the task's";
    if ((p.sid ?? null) !== (principal.sid ?? null)) return "the subject_token is of another session than the task's";
    return undefined;
  }

  /** The tasks from the root down to `facts`, each read once and cached. */
  async #chain(facts: TaskFacts): Promise<TaskFacts[]> {
    const chain: TaskFacts[] = [facts];
    let current = facts;
    while (current.parentTaskId) {
      const parent = await this.#access.factsOf(current.parentTaskId);
      // The parent column is a foreign key: a missing parent is a broken database, not a request problem.
      if (!parent) throw new Error(`task ${current.taskId} names a parent ${current.parentTaskId} that is not on record`);
      chain.unshift(parent);
      current = parent;
    }
    return chain;
  }
}

/** The first hop of `chain` (root first) that the rule's delegation block refuses, as a reason. */
function delegationRefusal(policy: Policy, rule: string, chain: readonly TaskFacts[]): string | undefined {
  for (let i = 1; i < chain.length; i++) {
    const hop = chain[i]!;
    const decision = policy.delegationDecision({
      rule,
      delegatee: SpiffeId.parse(hop.ownerSpiffeId),
      depth: hop.depth,
      scopes: hop.scopes,
      audience: hop.audience,
      parentAudience: chain[i - 1]!.audience,
    });
    if (!decision.allowed) return `delegation to ${hop.ownerSpiffeId} (task ${hop.taskId}): ${decision.reason}`;
  }
  return undefined;
}

function principalRequest(facts: TaskFacts) {
  const p = facts.principal;
  if (!p) return undefined;
  return { iss: p.iss, sub: p.sub, ...(p.sid !== undefined ? { sid: p.sid } : {}), claims: facts.principalClaims ?? {} };
}
